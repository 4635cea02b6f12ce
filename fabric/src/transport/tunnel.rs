//! The three roles of a relayed connection: the initiator asking a relay for a
//! tunnel, the relay splicing two connections, and the target accepting a tunnel.
//! See [`crate::relay`] for the wire format and the security argument.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::socket::{FabricSocket, TunnelRoute};
use super::{close_code, ConnEntry, Inner, TransportError};
use crate::channel::Channel;
use crate::frame::{FrameError, Framed};
use crate::path::PathKind;
use crate::relay::{
    new_token, token_from_hex, token_to_hex, LegEnd, OfferResponse, RateLimit, RelayRequest,
    RelayResponse, Token, TunnelOffer, CONTROL_MAX_FRAME, RELAY_ACCEPT_SERVICE, RELAY_SERVICE,
};
use crate::topology::NodeId;

/// How often a relay re-binds a tunnel's tokens to the addresses its outer
/// connections currently use (after a NAT rebinding the outer QUIC connection
/// migrates; the tunnel follows within this delay).
const REBIND_EVERY: Duration = Duration::from_secs(1);

/// Tunnel slots, in total and per node (the requester at a relay, the offering
/// relay at a target). A slot is reserved before any work is done for a tunnel
/// and released when its [`SlotGuard`] drops, under one lock: checking a count
/// and inserting later would let concurrent requests all pass the check.
#[derive(Debug, Default)]
pub(crate) struct TunnelSlots {
    counts: Mutex<SlotCounts>,
}

#[derive(Debug, Default)]
struct SlotCounts {
    total: usize,
    by_peer: HashMap<NodeId, usize>,
}

impl TunnelSlots {
    /// Takes one slot for `peer`, or says which limit is reached.
    pub(crate) fn try_reserve(
        self: &Arc<Self>,
        peer: NodeId,
        max_total: usize,
        max_per_peer: usize,
    ) -> Result<SlotGuard, String> {
        let mut c = self
            .counts
            .lock()
            .map_err(|_| "tunnel bookkeeping unavailable".to_owned())?;
        if c.total >= max_total {
            return Err(format!("at its limit of {max_total} tunnels"));
        }
        let mine = c.by_peer.get(&peer).copied().unwrap_or(0);
        if mine >= max_per_peer {
            return Err(format!(
                "node {} already holds its quota of {max_per_peer} tunnels",
                peer.short()
            ));
        }
        c.total += 1;
        c.by_peer.insert(peer, mine + 1);
        Ok(SlotGuard {
            slots: self.clone(),
            peer,
        })
    }

    #[cfg(test)]
    pub(crate) fn total(&self) -> usize {
        self.counts.lock().map(|c| c.total).unwrap_or(0)
    }
}

/// One reserved tunnel slot; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct SlotGuard {
    slots: Arc<TunnelSlots>,
    peer: NodeId,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Ok(mut c) = self.slots.counts.lock() {
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.by_peer.get_mut(&self.peer) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.by_peer.remove(&self.peer);
                }
            }
        }
    }
}

/// Unregisters a tunnel route unless disarmed, so a dial cancelled by the
/// open deadline (or failing) does not leave a route behind.
struct RouteGuard<'a> {
    socket: &'a FabricSocket,
    vaddr: SocketAddr,
    armed: bool,
}

impl Drop for RouteGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.socket.unregister_tunnel(&self.vaddr);
        }
    }
}

/// Resolves when the peer ends a control stream (EOF, reset or anything sent):
/// the tunnel lives exactly as long as its control streams.
async fn control_ended(ctrl: &mut Framed<Channel>) {
    let mut buf = [0u8; 64];
    let _ = ctrl.get_mut().read(&mut buf).await;
}

impl Inner {
    fn control_error(&self, node: NodeId, during: &str, e: FrameError) -> TransportError {
        TransportError::Protocol {
            node,
            reason: format!("{during}: {e}"),
        }
    }

    /// Initiator side: asks `via` for a tunnel to `target` and runs an end-to-end
    /// handshake with `target` through it.
    pub(super) async fn dial_via_relay(
        self: &Arc<Self>,
        target: NodeId,
        via: NodeId,
    ) -> Result<ConnEntry, TransportError> {
        // Boxed: reaching the relay goes back through the (direct-only) path ladder.
        let relay = Box::pin(self.direct_connection_to(via)).await?;
        let ch = self.open_on(&relay, RELAY_SERVICE).await?;
        let mut ctrl = Framed::with_max_frame(ch, CONTROL_MAX_FRAME);
        let response = tokio::time::timeout(
            self.config.connect_timeout,
            ctrl.request::<_, RelayResponse>(&RelayRequest::Connect { target }),
        )
        .await
        .map_err(|_| TransportError::Timeout {
            during: format!("asking relay {via} for a tunnel to {target}"),
            after: self.config.connect_timeout,
        })?
        .map_err(|e| self.control_error(via, "relay request", e))?;
        let token = match response {
            RelayResponse::Ok { token } => {
                token_from_hex(&token).ok_or_else(|| TransportError::Protocol {
                    node: via,
                    reason: "relay answered with a malformed tunnel token".into(),
                })?
            }
            RelayResponse::Refused { reason } => {
                return Err(TransportError::RelayRefused {
                    relay: via,
                    target,
                    reason,
                })
            }
        };
        let vaddr = self.socket.register_tunnel(TunnelRoute {
            relay: relay.conn.remote_address(),
            local_ip: relay.conn.local_ip(),
            token,
            via,
        });
        let mut route = RouteGuard {
            socket: &self.socket,
            vaddr,
            armed: true,
        };
        // On failure (or cancellation) the guard drops the route and dropping
        // `ctrl` tells the relay to tear its side down.
        let conn = self
            .handshake(
                target,
                vaddr,
                format!("relay {via} at {}", relay.conn.remote_address()),
                self.tunnel_tc.clone(),
            )
            .await?;
        route.armed = false;
        let tunnel = ConnEntry {
            conn: conn.clone(),
            peer: target,
            path: PathKind::Relayed { via },
            outbound: true,
            channels: Default::default(),
        };
        let entry = self.register(conn, target, PathKind::Relayed { via }, true);
        // The keeper watches the tunnel's own connection, which may not be the
        // one `register` chose if the target dialled us at the same moment.
        self.spawn(
            self.clone()
                .keep_initiator_tunnel(ctrl, tunnel, relay, vaddr),
        );
        Ok(entry)
    }

    /// Holds the tunnel open while the inner connection lives; closes the inner
    /// connection at once when the relay goes away, so the next `open` re-plans
    /// instead of waiting for an idle timeout.
    async fn keep_initiator_tunnel(
        self: Arc<Self>,
        mut ctrl: Framed<Channel>,
        inner_conn: ConnEntry,
        relay: ConnEntry,
        vaddr: SocketAddr,
    ) {
        let mut shutdown = self.shutdown_signal();
        let why = tokio::select! {
            _ = inner_conn.conn.closed() => "end-to-end connection closed",
            _ = control_ended(&mut ctrl) => "relay ended the tunnel",
            _ = relay.conn.closed() => "connection to the relay was lost",
            _ = shutdown.changed() => "node shutting down",
        };
        if inner_conn.is_alive() {
            inner_conn
                .conn
                .close(close_code::RELAY_LOST.into(), b"relay path lost");
        }
        self.forget(inner_conn.peer, inner_conn.conn.stable_id());
        self.socket.unregister_tunnel(&vaddr);
        tracing::info!(
            peer = %inner_conn.peer.short(), via = %relay.peer.short(), reason = why,
            "relayed tunnel closed"
        );
    }

    /// Relay side: `from` asks us to reach a target.
    pub(super) async fn serve_relay(self: Arc<Self>, from: ConnEntry, ch: Channel) {
        let mut ctrl = Framed::with_max_frame(ch, CONTROL_MAX_FRAME);
        let request =
            match tokio::time::timeout(self.config.header_timeout, ctrl.recv::<RelayRequest>())
                .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %from.peer.short(), error = %e, "bad relay request");
                    return;
                }
                Err(_) => return,
            };
        let RelayRequest::Connect { target } = request;
        match self.splice(&from, target).await {
            Ok((to, from_token, offer, to_token, _slot)) => {
                let forwards = &self.socket.forwards;
                // Bounded: the requester is any key, and one that withholds
                // flow-control credit must not park this task (and its slot).
                let sent = tokio::time::timeout(
                    self.config.header_timeout,
                    ctrl.send(&RelayResponse::Ok {
                        token: token_to_hex(&from_token),
                    }),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    forwards.remove_pair(&from_token, &to_token);
                    return;
                }
                tracing::info!(
                    from = %from.peer.short(), to = %target.short(), tunnels = forwards.tunnels(),
                    "relaying a tunnel"
                );
                let mut offer = offer;
                let mut shutdown = self.shutdown_signal();
                let mut rebind = tokio::time::interval(REBIND_EVERY);
                rebind.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // A granted tunnel holds a slot of the requester's quota; one
                // that never carries an end-to-end handshake is torn down.
                let setup = tokio::time::sleep(self.config.tunnel_setup_timeout);
                tokio::pin!(setup);
                let mut set_up = false;
                let why = loop {
                    tokio::select! {
                        _ = control_ended(&mut ctrl) => break "initiator ended the tunnel",
                        _ = control_ended(&mut offer) => break "target ended the tunnel",
                        _ = from.conn.closed() => break "initiator connection lost",
                        _ = to.conn.closed() => break "target connection lost",
                        _ = shutdown.changed() => break "node shutting down",
                        _ = &mut setup, if !set_up => {
                            if !forwards.carried(&from_token, &to_token) {
                                break "no end-to-end traffic before the tunnel setup timeout";
                            }
                            set_up = true;
                        }
                        _ = rebind.tick() => forwards.refresh(
                            &from_token,
                            from.conn.remote_address(),
                            &to_token,
                            to.conn.remote_address(),
                        ),
                    }
                };
                // The tokens expire with the tunnel: later packets carrying them
                // are dropped as unknown.
                forwards.remove_pair(&from_token, &to_token);
                tracing::info!(from = %from.peer.short(), to = %target.short(), reason = why, "relay tunnel removed");
            }
            Err(reason) => {
                tracing::info!(from = %from.peer.short(), to = %target.short(), %reason, "refusing relay request");
                let _ = tokio::time::timeout(
                    self.config.header_timeout,
                    ctrl.send(&RelayResponse::Refused { reason }),
                )
                .await;
            }
        }
    }

    /// Sets up both halves of a tunnel; on success the forwarding entries exist.
    async fn splice(
        self: &Arc<Self>,
        from: &ConnEntry,
        target: NodeId,
    ) -> Result<(ConnEntry, Token, Framed<Channel>, Token, SlotGuard), String> {
        if !self.config.relay {
            return Err("this node does not have the relay role".into());
        }
        if matches!(from.path, PathKind::Relayed { .. }) {
            // Chains of relays would hide loops and multiply MTU overhead.
            return Err("requests arriving through another relay are not relayed again".into());
        }
        if target == self.node_id || target == from.peer {
            return Err("a tunnel must join two other nodes".into());
        }
        let forwards = &self.socket.forwards;
        // Reserved before the target is dialled: the slot is taken at once, so
        // concurrent requests cannot all pass a check made before the awaits.
        let slot = self
            .relay_slots
            .try_reserve(
                from.peer,
                self.config.max_tunnels,
                self.config.relay_tunnels_per_peer,
            )
            .map_err(|why| format!("relay {why}"))?;
        let to = self
            .direct_connection_to(target)
            .await
            .map_err(|e| format!("relay cannot reach the target: {e}"))?;
        // 128 random bits each: a collision with a live token is not a practical
        // concern, but checking costs nothing and keeps the table consistent.
        let from_token = new_token();
        let to_token = new_token();
        if from_token == to_token || forwards.contains(&from_token) || forwards.contains(&to_token)
        {
            return Err("tunnel token collision; retry".into());
        }
        let ch = self
            .open_on(&to, RELAY_ACCEPT_SERVICE)
            .await
            .map_err(|e| format!("target did not take the tunnel offer: {e}"))?;
        let mut offer = Framed::with_max_frame(ch, CONTROL_MAX_FRAME);
        // Install forwarding before the target answers so its first packets are
        // not lost; removed again if the offer fails.
        // Each token is bound to the address the relay sees its holder at, so a
        // token copied off the wire is useless from anywhere else.
        forwards.insert_pair(
            LegEnd {
                node: from.peer,
                token: from_token,
                addr: from.conn.remote_address(),
                local_ip: from.conn.local_ip(),
                conn: from.conn.stable_id(),
            },
            LegEnd {
                node: target,
                token: to_token,
                addr: to.conn.remote_address(),
                local_ip: to.conn.local_ip(),
                conn: to.conn.stable_id(),
            },
            self.config.relay_tunnel_rate.map(|rate| RateLimit {
                bytes_per_sec: rate,
                burst_bytes: self.config.relay_tunnel_burst,
            }),
        );
        let answer = tokio::time::timeout(
            self.config.connect_timeout,
            offer.request::<_, OfferResponse>(&TunnelOffer {
                token: token_to_hex(&to_token),
                from: from.peer,
            }),
        )
        .await;
        match answer {
            Ok(Ok(OfferResponse::Accepted)) => Ok((to, from_token, offer, to_token, slot)),
            other => {
                forwards.remove_pair(&from_token, &to_token);
                Err(match other {
                    Ok(Ok(OfferResponse::Refused { reason })) => {
                        format!("target refused: {reason}")
                    }
                    Ok(Err(e)) => format!("tunnel offer failed: {e}"),
                    Err(_) => "target did not answer the tunnel offer in time".into(),
                    Ok(Ok(OfferResponse::Accepted)) => unreachable!("handled above"),
                })
            }
        }
    }

    /// Target side: a relay offers us a tunnel from some node. We only install a
    /// route; the initiator's identity is proven by the inner handshake.
    pub(super) async fn serve_offer(self: Arc<Self>, relay: ConnEntry, ch: Channel) {
        let mut ctrl = Framed::with_max_frame(ch, CONTROL_MAX_FRAME);
        let offer = match tokio::time::timeout(
            self.config.header_timeout,
            ctrl.recv::<TunnelOffer>(),
        )
        .await
        {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                tracing::debug!(relay = %relay.peer.short(), error = %e, "bad tunnel offer");
                return;
            }
            Err(_) => return,
        };
        let Some(token) = token_from_hex(&offer.token) else {
            let _ = ctrl
                .send(&OfferResponse::Refused {
                    reason: "malformed tunnel token".into(),
                })
                .await;
            return;
        };
        // Only a node whose signed record gives it the relay role may place
        // tunnels here: otherwise any key could fill our tunnel slots.
        if !self.peer_info(relay.peer).is_some_and(|p| p.is_relay) {
            tracing::info!(from = %relay.peer.short(), "refusing tunnel offer from a node that is not a known relay");
            let _ = tokio::time::timeout(
                self.config.header_timeout,
                ctrl.send(&OfferResponse::Refused {
                    reason: "offers are accepted from known relays only".into(),
                }),
            )
            .await;
            return;
        }
        if matches!(relay.path, PathKind::Relayed { .. }) {
            let _ = ctrl
                .send(&OfferResponse::Refused {
                    reason: "offer arrived through a relay".into(),
                })
                .await;
            return;
        }
        let _slot = match self.target_slots.try_reserve(
            relay.peer,
            self.config.max_tunnels,
            self.config.max_tunnels,
        ) {
            Ok(slot) => slot,
            Err(why) => {
                let _ = ctrl
                    .send(&OfferResponse::Refused {
                        reason: format!("target {why}"),
                    })
                    .await;
                return;
            }
        };
        let vaddr = self.socket.register_tunnel(TunnelRoute {
            relay: relay.conn.remote_address(),
            local_ip: relay.conn.local_ip(),
            token,
            via: relay.peer,
        });
        if ctrl.send(&OfferResponse::Accepted).await.is_err() {
            self.socket.unregister_tunnel(&vaddr);
            return;
        }
        tracing::debug!(relay = %relay.peer.short(), claimed_from = %offer.from.short(), "accepted tunnel offer");
        let mut shutdown = self.shutdown_signal();
        // An accepted offer that no end-to-end connection uses in time is
        // dropped, so offers cannot hold our slots idle.
        let setup = tokio::time::sleep(self.config.tunnel_setup_timeout);
        tokio::pin!(setup);
        let mut set_up = false;
        let why = loop {
            tokio::select! {
                _ = control_ended(&mut ctrl) => break "relay ended the tunnel",
                _ = relay.conn.closed() => break "connection to the relay was lost",
                _ = shutdown.changed() => break "node shutting down",
                _ = &mut setup, if !set_up => {
                    if !self.has_connection_from(vaddr) {
                        break "no end-to-end connection before the tunnel setup timeout";
                    }
                    set_up = true;
                }
            }
        };
        self.socket.unregister_tunnel(&vaddr);
        // Close the end-to-end connection that rode this tunnel now rather than
        // after an idle timeout.
        let stale: Vec<ConnEntry> = match self.conns.lock() {
            Ok(c) => c
                .values()
                .filter(|e| e.conn.remote_address() == vaddr)
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        };
        for e in stale {
            e.conn
                .close(close_code::RELAY_LOST.into(), b"relay path lost");
            self.forget(e.peer, e.conn.stable_id());
        }
        tracing::info!(relay = %relay.peer.short(), reason = why, "tunnel to this node closed");
    }
}
