//! Stage 2, steer: which worker owns a frame's flow, decided before anything is rewritten. A
//! flow is owned by one worker, computable from any of its packets (`flow::owner_of` on the
//! client end, `nat::ports::owner` on a masquerade port); a frame for another worker is handed
//! to it as it arrived.

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

    /// `Some(Handoff)` when worker `owner` is not this one.
    #[inline]
    pub(super) fn handoff(&self, owner: u16) -> Option<Verdict> {
        (owner != self.cfg.worker).then_some(Verdict::Handoff(owner))
    }
}
