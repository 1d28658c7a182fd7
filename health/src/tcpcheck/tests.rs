//! The tcp-check programs run against real Redis servers and scripted listeners.
use super::*;
use harness::Redis;
use tokio::net::TcpListener;

fn prog(steps: &[&str]) -> Program {
    Program::new(steps.iter().map(|s| s.parse().unwrap()).collect()).unwrap()
}

#[test]
fn programs_are_equal_when_their_steps_do_the_same() {
    // A reload compares checks with ==: the same regex source is the same step.
    let a = prog(&["connect", "send PING", "expect rstring ^.PONG"]);
    assert_eq!(a, prog(&["connect", "send PING", "expect rstring ^.PONG"]));
    assert_ne!(a, prog(&["connect", "send PING", "expect rstring ^.PON"]));
    assert_ne!(a, prog(&["connect", "send PING", "expect string ^.PONG"]));
    assert_eq!(Program::redis_master(None), Program::redis_master(None));
    let auth = |p: &str| Auth {
        user: None,
        password: p.into(),
    };
    assert_ne!(
        Program::redis_master(Some(&auth("a"))),
        Program::redis_master(Some(&auth("b")))
    );
}

/// A server that answers the first read with `reply` (and then closes if `close`).
async fn server(reply: &'static [u8], close: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ = s.write_all(reply).await;
                if !close {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    addr
}

#[test]
fn parses_steps() {
    assert!(matches!("connect".parse(), Ok(Step::Connect)));
    match "send PING\\r\\n".parse::<Step>() {
        Ok(Step::Send(d)) => assert_eq!(d, b"PING\r\n"),
        other => panic!("{other:?}"),
    }
    match "send a\\x00b".parse::<Step>() {
        Ok(Step::Send(d)) => assert_eq!(d, b"a\0b"),
        other => panic!("{other:?}"),
    }
    assert!(matches!("expect string +PONG".parse(), Ok(Step::ExpectString(s)) if s == "+PONG"));
    assert!(matches!(
        "expect rstring ^role:(master)".parse(),
        Ok(Step::ExpectRegex(_))
    ));
    assert!(matches!("expect binary 2b4f4b".parse(), Ok(Step::ExpectBinary(b)) if b == b"+OK"));
    assert!(matches!(
        "bogus".parse::<Step>(),
        Err(StepError::Unknown(_))
    ));
    assert!(matches!(
        "send".parse::<Step>(),
        Err(StepError::MissingArgument(_))
    ));
    assert!(matches!(
        "send a\\q".parse::<Step>(),
        Err(StepError::BadEscape(_))
    ));
    assert!(matches!(
        "expect rstring (".parse::<Step>(),
        Err(StepError::BadRegex(..))
    ));
    assert!(matches!(
        "expect binary 2g".parse::<Step>(),
        Err(StepError::BadHex(_))
    ));
    assert!(matches!(
        "expect string".parse::<Step>(),
        Err(StepError::MissingArgument(_))
    ));
    assert!(matches!(Program::new(vec![]), Err(StepError::Empty)));
    assert!(matches!(
        Program::new(vec![Step::Send(b"x".to_vec())]),
        Err(StepError::FirstNotConnect)
    ));
    assert!(matches!(
        Program::new(vec![Step::Connect, Step::Connect]),
        Err(StepError::LaterConnect)
    ));
}

#[tokio::test]
async fn each_expect_kind_passes_and_fails() {
    let addr = server(b"+PONG\r\n", true).await;
    let t = Duration::from_secs(2);
    for ok in [
        &["connect", "send PING\\r\\n", "expect string +PONG"][..],
        &["connect", "send PING\\r\\n", "expect rstring ^\\+P.NG"],
        &["connect", "send PING\\r\\n", "expect binary 2b504f4e47"],
    ] {
        let r = prog(ok).run(addr, t).await;
        assert!(r.ok, "{ok:?}: {r:?}");
        assert_eq!(r.replies, vec![b"+PONG\r\n".to_vec()]);
    }
    let r = prog(&["connect", "send PING\\r\\n", "expect string +OK"])
        .run(addr, t)
        .await;
    assert!(!r.ok);
    assert_eq!(r.failed_step, Some(2));
    assert_eq!(r.partial, b"+PONG\r\n");
    let reason = r.reason.unwrap();
    assert!(
        reason.contains("step 3") && reason.contains("before EOF"),
        "{reason}"
    );
}

#[tokio::test]
async fn connect_refused_and_timeout_fail_with_reasons() {
    let t = Duration::from_millis(300);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let r = prog(&["connect"]).run(closed, t).await;
    assert!(!r.ok && r.failed_step == Some(0), "{r:?}");

    let mute = server(b"", false).await;
    let r = prog(&["connect", "send x", "expect string y"])
        .run(mute, t)
        .await;
    assert!(!r.ok);
    assert_eq!(r.failed_step, Some(2));
    assert!(r.reason.unwrap().contains("timeout"));
}

#[tokio::test]
async fn oversized_reply_fails() {
    static BIG: [u8; 100_000] = [b'a'; 100_000];
    let addr = server(&BIG, false).await;
    let r = prog(&["connect", "send x", "expect string b"])
        .run(addr, Duration::from_secs(2))
        .await;
    assert!(!r.ok);
    assert!(r.reason.unwrap().contains("too large"));
    assert!(r.partial.len() <= MAX_REPLY);
}

#[tokio::test]
async fn redis_master_program_against_real_redis() {
    let master = Redis::start();
    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    let p = Program::redis_master(None);
    let t = Duration::from_secs(2);
    let r = p.run(master.addr(), t).await;
    assert!(r.ok, "{r:?}");
    let r = p.run(replica.addr(), t).await;
    assert!(!r.ok);
    assert_eq!(r.failed_step, Some(4), "{r:?}");
    assert!(String::from_utf8_lossy(&r.partial).contains("role:slave"));

    let locked = Redis::start_with(&["--requirepass", "s3cret pass"]);
    let r = p.run(locked.addr(), t).await;
    assert!(!r.ok);
    let reason = r.reason.unwrap();
    assert!(reason.contains("the server answered -NOAUTH"), "{reason}");
    let wrong = Auth {
        user: None,
        password: "wrong".into(),
    };
    let r = Program::redis_master(Some(&wrong))
        .run(locked.addr(), t)
        .await;
    assert_eq!(r.failed_step, Some(2), "{r:?}");
    let reason = r.reason.unwrap();
    assert!(
        reason.contains("the server answered -WRONGPASS"),
        "{reason}"
    );
    let auth = Auth {
        user: None,
        password: "s3cret pass".into(),
    };
    let r = Program::redis_master(Some(&auth))
        .run(locked.addr(), t)
        .await;
    assert!(r.ok, "{r:?}");
}
