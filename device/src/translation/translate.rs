//! TRANSLATE in, TRANSLATE_REPLY out: the checks of spec/TRANSLATION.md §2.3 and the mapping
//! of the engine's answer onto the reply.

use virtio_iommu_spec::event::FaultFlags;
use virtio_iommu_spec::translation::{
    Translate, TranslateFault, TranslateFlags, TranslateReply, TranslateStatus,
};

use crate::engine::{DmaAttrs, TranslateAccess, TranslateOutcome};

use super::stats::TranslationStats;

/// The engine's question for a well-formed request, `None` for one answered `INVAL` (bad
/// length or flags; the endpoint is checked against the client's ranges by the caller).
#[must_use]
pub fn access(t: &Translate) -> Option<TranslateAccess> {
    if !t.is_valid() {
        return None;
    }
    Some(TranslateAccess {
        endpoint: t.endpoint,
        pasid: t.pasid(),
        iova: t.iova,
        last: t.last()?,
        read: t.flags.contains(TranslateFlags::READ),
        write: t.flags.contains(TranslateFlags::WRITE),
        attrs: DmaAttrs {
            privileged: t.flags.contains(TranslateFlags::PRIV),
            exec: t.flags.contains(TranslateFlags::EXEC),
        },
        no_fault: t.flags.contains(TranslateFlags::NO_FAULT),
    })
}

/// The reply for a finished translation (`Pending` is not finished: it gets none yet).
#[must_use]
pub fn reply(tag: u64, outcome: &TranslateOutcome) -> Option<TranslateReply> {
    Some(match outcome {
        TranslateOutcome::Translated(r) => TranslateReply::ok(tag, *r),
        TranslateOutcome::Fault(f) => {
            let mut flags = f.access & (FaultFlags::READ | FaultFlags::WRITE | FaultFlags::EXEC);
            flags |= FaultFlags::ADDRESS;
            TranslateReply::fault(
                tag,
                TranslateFault {
                    reason: f.reason,
                    flags,
                    address: f.address.unwrap_or(0),
                },
            )
        }
        TranslateOutcome::Unsupported => TranslateReply::refused(tag, TranslateStatus::Unsupp),
        TranslateOutcome::Pending(_) => return None,
    })
}

/// Counts a reply.
pub fn count(stats: &mut TranslationStats, r: &TranslateReply) {
    let c = match r.status {
        TranslateStatus::Ok => &mut stats.translate_ok,
        TranslateStatus::Fault => &mut stats.translate_fault,
        TranslateStatus::Inval => &mut stats.translate_inval,
        TranslateStatus::Unsupp => &mut stats.translate_unsupp,
    };
    *c += 1;
}
