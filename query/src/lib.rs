//! mmsb's SQL layer. Empty until the SQL issue lands.
#![deny(missing_docs)]
