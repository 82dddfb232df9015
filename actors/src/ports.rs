//! The PortManager actor: leases free loopback ports to HTTP child servers.
//!
//! **Owns:** the set of ports currently leased.
//! **Messages:** `Lease { owner, reply }` → a port no other child holds; `Release(port)`.
//! **On failure:** restarted by the root; the lease set starts empty, which at worst lets
//! two children race for a port — the loser fails to bind, exits, and is restarted on a
//! new lease.
//!
//! A port is found by binding `127.0.0.1:0` and closing the socket again; between that
//! and the child's own bind another process could take it, which the restart covers.

use std::collections::HashMap;
use std::net::TcpListener;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

pub enum PortMsg {
    Lease {
        owner: String,
        reply: RpcReplyPort<Result<u16, String>>,
    },
    Release(u16),
}

/// Handle used by server actors.
#[derive(Clone)]
pub struct PortManager {
    actor: ActorRef<PortMsg>,
}

impl PortManager {
    pub fn new(actor: ActorRef<PortMsg>) -> Self {
        PortManager { actor }
    }

    pub async fn lease(&self, owner: &str) -> Result<u16, String> {
        ractor::call_t!(
            self.actor,
            |reply| PortMsg::Lease {
                owner: owner.to_owned(),
                reply
            },
            5_000
        )
        .map_err(|e| format!("port manager unavailable: {e}"))?
    }

    pub fn release(&self, port: u16) {
        let _ = self.actor.send_message(PortMsg::Release(port));
    }
}

pub struct PortManagerActor;

impl Actor for PortManagerActor {
    type Msg = PortMsg;
    type State = HashMap<u16, String>;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<PortMsg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(HashMap::new())
    }

    async fn handle(
        &self,
        _myself: ActorRef<PortMsg>,
        message: PortMsg,
        leased: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PortMsg::Lease { owner, reply } => {
                let mut result = Err("no free loopback port found".to_owned());
                for _ in 0..32 {
                    match TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()) {
                        Ok(addr) if !leased.contains_key(&addr.port()) => {
                            leased.insert(addr.port(), owner.clone());
                            result = Ok(addr.port());
                            break;
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            result = Err(format!("cannot find a free port: {e}"));
                            break;
                        }
                    }
                }
                let _ = reply.send(result);
            }
            PortMsg::Release(port) => {
                leased.remove(&port);
            }
        }
        Ok(())
    }
}
