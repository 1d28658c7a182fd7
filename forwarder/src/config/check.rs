//! `[service.check]`, validated: HAProxy's schedule (interval, fastinter, downinter, rise,
//! fall, timeout, with its defaults) and the program every check runs, either the redis-master
//! sequence rendered from health's own [`health::Program::redis_master`] or tcp-check steps as
//! written. The TLS its `connect` speaks is the service's `server_tls` (set in `validate.rs`).

use std::time::Duration;

use super::raw::RawCheck;
use super::validate::{Res, Validator, MAX_CHECK_INTERVAL};
use super::{Check, CheckKind};

impl Validator<'_> {
    /// `[service.check]` at `key`.
    pub(super) fn check(&self, key: &str, c: RawCheck) -> Res<Check> {
        let kind = c.kind.unwrap_or(CheckKind::RedisMaster);
        let interval = self.dur(
            &format!("{key}.interval"),
            &c.interval,
            Duration::from_secs(1),
        )?;
        let fastinter = self.dur(&format!("{key}.fastinter"), &c.fastinter, interval)?;
        let downinter = self.dur(&format!("{key}.downinter"), &c.downinter, interval)?;
        // HAProxy: `timeout check` defaults to the interval.
        let timeout = self.dur(&format!("{key}.timeout"), &c.timeout, interval)?;
        for (k, v) in [
            ("interval", interval),
            ("fastinter", fastinter),
            ("downinter", downinter),
            ("timeout", timeout),
        ] {
            if v > MAX_CHECK_INTERVAL {
                return Err(self.err(format!("{key}.{k}"), "at most 1h"));
            }
            if v < Duration::from_millis(1) {
                return Err(self.err(format!("{key}.{k}"), "at least 1ms"));
            }
        }
        // HAProxy's defaults: rise 2, fall 3.
        let rise = c.rise.unwrap_or(2);
        let fall = c.fall.unwrap_or(3);
        for (k, v) in [("rise", rise), ("fall", fall)] {
            if !(1..=1000).contains(&v) {
                return Err(self.err(format!("{key}.{k}"), "must be between 1 and 1000"));
            }
        }
        let mut redis_auth = None;
        let (steps, program) = match kind {
            CheckKind::RedisMaster => {
                if c.steps.is_some() {
                    return Err(self.err(
                        format!("{key}.steps"),
                        "steps are only for kind = \"tcp-check\"; redis-master has its own",
                    ));
                }
                let auth = match (c.user, c.password) {
                    (user, Some(password)) => Some(health::Auth { user, password }),
                    (Some(_), None) => {
                        return Err(self.err(format!("{key}.user"), "a user needs a password"))
                    }
                    (None, None) => None,
                };
                let program = health::Program::redis_master(auth.as_ref());
                redis_auth = auth;
                // As the program runs them, with the AUTH password masked.
                let steps = program
                    .steps()
                    .iter()
                    .map(|step| match step {
                        health::Step::Send(d) if d.starts_with(b"*") => "send AUTH ***".into(),
                        other => other.to_string(),
                    })
                    .collect();
                (steps, program)
            }
            CheckKind::TcpCheck => {
                if c.user.is_some() || c.password.is_some() {
                    return Err(self.err(
                        format!("{key}.password"),
                        "user/password are for kind = \"redis-master\"; write AUTH as a send step",
                    ));
                }
                let steps = c.steps.unwrap_or_else(|| vec!["connect".to_string()]);
                let mut parsed = Vec::with_capacity(steps.len());
                for (j, s) in steps.iter().enumerate() {
                    let step = s
                        .parse::<health::Step>()
                        .map_err(|e| self.err(format!("{key}.steps[{j}]"), e.to_string()))?;
                    parsed.push(step);
                }
                let program = health::Program::new(parsed)
                    .map_err(|e| self.err(format!("{key}.steps"), e.to_string()))?;
                (steps, program)
            }
        };
        Ok(Check {
            kind,
            steps,
            interval,
            fastinter,
            downinter,
            rise,
            fall,
            timeout,
            program,
            auth: redis_auth,
        })
    }
}
