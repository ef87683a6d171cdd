//! mmsb's optional GPU merge backend. Empty until the GPU issue lands.
#![deny(missing_docs)]
