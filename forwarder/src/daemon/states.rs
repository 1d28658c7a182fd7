//! The operator's server states (`POST /servers/...`, `forwarder server`), by service. They
//! outlive the monitors a reload replaces: a new monitor starts with its service's states, a
//! server written as a name keeps its state when the name moves, and a server the reload
//! removes loses it (logged).

use std::collections::HashMap;
use std::net::SocketAddr;

use health::AdminState;

use crate::config::Config;

/// Every state other than `ready`, by service and server address.
#[derive(Default)]
pub(super) struct AdminStates(HashMap<String, HashMap<SocketAddr, AdminState>>);

impl AdminStates {
    /// The states of `service`'s servers, for its next monitor.
    pub(super) fn of(&self, service: &str) -> HashMap<SocketAddr, AdminState> {
        self.0.get(service).cloned().unwrap_or_default()
    }

    /// Records `state` (`ready` is the absence of a state).
    pub(super) fn set(&mut self, service: &str, addr: SocketAddr, state: AdminState) {
        let of = self.0.entry(service.to_string()).or_default();
        match state {
            AdminState::Ready => of.remove(&addr),
            other => of.insert(addr, other),
        };
    }

    /// Carries the states from `old` to `new`: follows moved names, forgets removed servers.
    pub(super) fn reload(&mut self, old: &Config, new: &Config) {
        self.follow_names(old, new);
        self.forget_removed(new);
    }

    /// Moves the state of a server written as a name to the address the name resolves to now:
    /// the operator set the state of that server (in `maint`, say), and a moved name must not
    /// make it routable behind their back.
    fn follow_names(&mut self, old: &Config, new: &Config) {
        for svc in &new.service {
            let (Some(before), Some(of)) = (
                old.service.iter().find(|o| o.name == svc.name),
                self.0.get_mut(&svc.name),
            ) else {
                continue;
            };
            for r in svc.resolved.iter().filter(|r| r.is_server()) {
                let moved = before
                    .resolved
                    .iter()
                    .find(|b| b.key == r.key && b.name == r.name && b.address != r.address);
                if let Some(state) = moved.and_then(|b| of.remove(&b.address)) {
                    tracing::warn!(service = %svc.name, name = %r.name, server = %r.address,
                        state = state.as_str(),
                        "the operator state follows the name to its new address");
                    of.insert(r.address, state);
                }
            }
        }
    }

    /// Drops the states of servers `new` no longer has (a removed service, or a server no
    /// longer in a service's `servers`), logged: a server added again later starts `ready`,
    /// not in a state nobody sees any more. Services that discover their servers keep theirs
    /// (a server the Sentinels do not report now may come back).
    fn forget_removed(&mut self, new: &Config) {
        self.0.retain(|name, of| {
            let svc = new.service.iter().find(|s| &s.name == name);
            of.retain(|addr, state| {
                let keep = svc.is_some_and(|s| s.servers.is_empty() || s.servers.contains(addr));
                if !keep {
                    tracing::warn!(service = %name, server = %addr, state = state.as_str(),
                        "server no longer configured: its operator state is forgotten");
                }
                keep
            });
            !of.is_empty()
        });
    }
}
