//! Commit records: the payload of one TLog commit frame. Filled in by the codec work.
