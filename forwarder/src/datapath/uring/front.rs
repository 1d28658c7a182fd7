//! The front of the uring path, on each worker's ring: a multishot `ACCEPT` per listener,
//! admission (the shared [`Gate`]), the queue of clients waiting for a master (the shared
//! [`ServiceRuntime::next`]), and the `CONNECT` to it, linked to a `LINK_TIMEOUT` of
//! `timeout.connect`. A connected client becomes a session (`session.rs`) on the same thread.
//!
//! [`Gate`]: crate::admission::Gate

// unsafe: adopting the descriptor an io_uring ACCEPT (accept4) returned as an `OwnedFd`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use io_uring::{opcode, squeue, types};
use socket2::{SockAddr, SockRef};

use super::ops::{user_data, Op};
use super::state::{Dial, Listener, Queued};
use super::worker::Worker;
use super::{Job, Listen};
use crate::metrics::{End, Reject};
use crate::router::Route;
use crate::service::{Next, ServiceRuntime, ACCEPT_PAUSE};
use crate::session_log::Admitted;

impl Worker {
    /// Takes a listener of a service and arms its accept.
    pub(super) fn add_listener(&mut self, listen: Listen) {
        let idx = self.listeners.insert(Listener {
            listen,
            armed: false,
            paused_until: None,
            closing: false,
        });
        self.rearm(idx);
    }

    fn rearm(&mut self, idx: usize) {
        let l = &mut self.listeners[idx];
        if l.armed {
            return;
        }
        if l.closing {
            self.listeners.remove(idx);
            return;
        }
        if l.paused_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        l.paused_until = None;
        l.armed = true;
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        let e = opcode::AcceptMulti::new(types::Fd(l.listen.fd.as_raw_fd()))
            .flags(flags)
            .build()
            .user_data(user_data(idx, 0, Op::Accept));
        self.push(&[e]);
    }

    pub(super) fn on_accept(&mut self, idx: usize, res: i32, flags: u32) {
        let Some(l) = self.listeners.get_mut(idx) else {
            tracing::error!(idx, "accept completion for an unknown listener");
            return;
        };
        if !io_uring::cqueue::more(flags) {
            l.armed = false;
        }
        if res >= 0 {
            // SAFETY: a successful accept returns a new descriptor that nothing else owns.
            let client = unsafe { OwnedFd::from_raw_fd(res) };
            if !l.closing {
                let svc = Arc::clone(&l.listen.runtimes.borrow());
                self.admit(svc, client);
            }
        } else if !l.closing && res != -rustix::io::Errno::CANCELED.raw_os_error() {
            // EMFILE and friends: pause rather than spin on a connection that stays queued.
            let svc = Arc::clone(&l.listen.runtimes.borrow());
            svc.accept_failed(&self.accept_log, &io::Error::from_raw_os_error(-res));
            if !l.armed {
                l.paused_until = Some(Instant::now() + ACCEPT_PAUSE);
            }
        }
        self.rearm(idx);
    }

    /// Admits a client (the shared gate) and routes it.
    fn admit(&mut self, svc: Arc<ServiceRuntime>, client: OwnedFd) {
        // A client that reset before we got here has no peer any more: nothing to do.
        let Some(peer) = SockRef::from(&client)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
        else {
            return;
        };
        let permit = match svc.gate.admit(peer) {
            Ok(p) => p,
            Err(why) => return svc.refused(peer, why),
        };
        let idx = self.queued.insert(Queued {
            client,
            admitted: Admitted::now(peer),
            permit,
            deadline: svc.queue_deadline(),
            svc,
            after: None,
            dial: None,
        });
        self.admitted.push(idx);
    }

    /// Connects a queued client to its master, leaves it waiting for one (it is looked at again
    /// when routes change and at every tick), or gives up on it.
    fn route(&mut self, idx: usize) {
        let q = &self.queued[idx];
        match q.svc.next(q.after, q.deadline) {
            Next::Wait => {}
            Next::GiveUp(why) => {
                let q = self.queued.remove(idx);
                q.svc.give_up(q.admitted, why);
            }
            Next::Connect(route) => self.dial(idx, route),
        }
    }

    /// `CONNECT` to the master, linked to a `LINK_TIMEOUT` of `timeout.connect`.
    fn dial(&mut self, idx: usize, route: Route) {
        let q = &mut self.queued[idx];
        let ty = socket2::Type::STREAM.nonblocking().cloexec();
        let domain = socket2::Domain::for_address(route.master);
        let server = match socket2::Socket::new(domain, ty, Some(socket2::Protocol::TCP)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(service = %q.svc.name, error = %e, "cannot open a socket to the master");
                q.after = Some(route.generation);
                return self.route(idx);
            }
        };
        // Redis is request/response: never hold a small reply back for Nagle.
        let _ = server.set_nodelay(true);
        let addr = Box::new(SockAddr::from(route.master));
        let timeout = Box::new(types::Timespec::from(q.svc.timeouts.connect));
        let c = opcode::Connect::new(types::Fd(server.as_raw_fd()), addr.as_ptr(), addr.len())
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(user_data(idx, 0, Op::Connect));
        let t = opcode::LinkTimeout::new(&*timeout)
            .build()
            .user_data(user_data(idx, 0, Op::ConnectTimeout));
        q.dial = Some(Dial {
            server: server.into(),
            started: Instant::now(),
            route,
            _addr: addr,
            _timeout: timeout,
        });
        self.push(&[c, t]);
    }

    pub(super) fn on_connect(&mut self, idx: usize, res: i32) {
        let Some(dial) = self.queued.get_mut(idx).and_then(|q| q.dial.take()) else {
            tracing::error!(idx, "connect completion for an unknown client");
            return;
        };
        if res < 0 {
            let q = &mut self.queued[idx];
            let error = match -res {
                libc::ECANCELED => "timed out".to_string(),
                e => io::Error::from_raw_os_error(e).to_string(),
            };
            tracing::debug!(service = %q.svc.name, master = %dial.route.master, error, "connect failed");
            q.after = Some(dial.route.generation);
            return self.route(idx);
        }
        let q = self.queued.remove(idx);
        let trace = q.svc.connected(q.admitted, dial.route.master, dial.started);
        if !q.svc.still_routed(&dial.route) {
            return q
                .svc
                .session_ended(trace.as_deref(), Reject::ConnectFailed.as_str());
        }
        let _ = SockRef::from(&q.client).set_nodelay(true);
        self.add(Job {
            fds: [q.client, dial.server],
            cut: dial.route.cut,
            _permit: q.permit,
            svc: q.svc,
            trace,
        });
    }

    /// Routes queued clients whose master appeared, gives up on those whose time is up, and lets
    /// go of them all at shutdown.
    pub(super) fn check_queued(&mut self) {
        let waiting: Vec<usize> = self
            .queued
            .iter()
            .filter(|(_, q)| q.dial.is_none())
            .map(|(i, _)| i)
            .collect();
        for idx in waiting {
            if self.queued[idx].svc.shutdown.is_cancelled() {
                let q = self.queued.remove(idx);
                q.svc.never_connected(q.admitted, End::Shutdown.as_str());
            } else {
                self.route(idx);
            }
        }
    }

    /// Closes listeners that stopped accepting, re-arms paused ones.
    pub(super) fn check_listeners(&mut self) {
        let all: Vec<usize> = self.listeners.iter().map(|(i, _)| i).collect();
        for idx in all {
            let l = &mut self.listeners[idx];
            if l.listen.accepting.is_cancelled() && !l.closing {
                l.closing = true;
                if l.armed {
                    let ud = user_data(idx, 0, Op::Accept);
                    let e = opcode::AsyncCancel::new(ud).build().user_data(user_data(
                        idx,
                        0,
                        Op::Cancel,
                    ));
                    self.push(&[e]);
                    continue;
                }
            }
            self.rearm(idx);
        }
    }

    /// Routes the clients admitted in the last batch of completions (see `Worker::admitted`).
    pub(super) fn route_admitted(&mut self) {
        for idx in std::mem::take(&mut self.admitted) {
            if self.queued.get(idx).is_some_and(|q| q.dial.is_none()) {
                self.route(idx);
            }
        }
    }
}
