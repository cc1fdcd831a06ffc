//! Stage 2, steer: which worker owns a frame's flow, decided before anything is rewritten, by
//! one function per way in (`published_owner` from the uplink, `inner_owner` for VXLAN,
//! `task_owner` from a local task). A flow is owned by one worker, computable from any of its
//! packets (`flow::owner_of` on the client end, `nat::ports::owner` on a masquerade port); a
//! frame for another worker is handed to it as it arrived.

use super::*;

impl Pipeline {
    /// The worker that owns the flow of a decapsulated packet `l3` (read in place, before
    /// decapsulation), whose destination and source are of kinds `dst` and `src` (`None`: not
    /// an overlay address); this worker when no flow is involved.
    #[inline]
    pub(super) fn inner_owner(&self, l3: &L3, dst: Option<AddrKind>, src: Option<AddrKind>) -> u16 {
        let workers = self.cfg.workers;
        match dst {
            // A reply to a flow this node masqueraded: its port says which worker owns it.
            Some(AddrKind::Endpoint { local: true, .. }) => ports::owner(l3.dport, workers),
            Some(AddrKind::Task { local: true, .. }) => {
                if !l3.has_ports() || matches!(src, Some(AddrKind::Endpoint { .. })) {
                    self.cfg.worker
                } else if src.is_none() {
                    // An outside client, its address kept: owned by the client end.
                    owner_of(l3.src, l3.sport, workers)
                } else {
                    owner_of(l3.dst, l3.dport, workers)
                }
            }
            // A reply towards an outside client of a keep-client-IP flow.
            None => owner_of(l3.dst, l3.dport, workers),
            Some(_) => self.cfg.worker,
        }
    }

    /// The worker that owns a new or established flow to a published port: the client end's
    /// (`client`, `port`; an IPv6 client's stand-in), whatever its packet (a router's ICMP
    /// error about a reply names it by its quote).
    #[inline]
    pub(super) fn published_owner(&self, client: u32, port: u16) -> u16 {
        owner_of(client, port, self.cfg.workers)
    }

    /// The worker that owns the flow of a packet from a local task to an address of kind `dst`
    /// (`None`: outside the overlay); this worker when no flow is involved (no ports, or a
    /// stateless path).
    #[inline]
    pub(super) fn task_owner(&self, l3: &L3, dst: Option<AddrKind>) -> u16 {
        let workers = self.cfg.workers;
        if !l3.has_ports() {
            return self.cfg.worker;
        }
        match dst {
            // A VIP connection: owned by the client task's end.
            Some(AddrKind::Vip { .. }) => owner_of(l3.src, l3.sport, workers),
            // A reply to a flow masqueraded to this node's endpoint or (hairpin) a gateway:
            // the port says which worker owns it.
            Some(AddrKind::Endpoint { local: true, .. } | AddrKind::Gateway) => {
                ports::owner(l3.dport, workers)
            }
            // A reply towards the client end: a local task (VIP) or an outside client (kept
            // client IP).
            Some(AddrKind::Task { local: true, .. }) | None => owner_of(l3.dst, l3.dport, workers),
            // To another node: stateless.
            Some(AddrKind::Task { local: false, .. } | AddrKind::Endpoint { local: false, .. }) => {
                self.cfg.worker
            }
        }
    }

    /// `Some(Handoff)` when worker `owner` is not this one.
    #[inline]
    pub(super) fn handoff(&self, owner: u16) -> Option<Verdict> {
        (owner != self.cfg.worker).then_some(Verdict::Handoff(owner))
    }
}
