//! Building a [`Delta`] from runs parsed one at a time, without collecting
//! them first: the runs are streamed into [`Delta::from_sorted_runs`], which
//! checks they are sorted and disjoint.

use crate::delta::{Delta, DeltaRun};
use crate::error::WalError;
use crate::ids::PageId;

use super::CodecError;

/// Builds a delta of `page_id` from the runs `next_run` yields until it
/// returns `Ok(None)`. A parse error stops the stream and is returned in
/// preference to whatever the builder made of the runs before it.
pub(crate) fn build_delta<'a, F>(page_id: PageId, mut next_run: F) -> Result<Delta, WalError>
where
    F: FnMut() -> Result<Option<DeltaRun<'a>>, CodecError>,
{
    let mut failure = None;
    let runs = std::iter::from_fn(|| match next_run() {
        Ok(run) => run,
        Err(err) => {
            failure = Some(err);
            None
        }
    });
    let built = Delta::from_sorted_runs(page_id, runs);
    match failure {
        Some(err) => Err(err.into()),
        None => Ok(built?),
    }
}
