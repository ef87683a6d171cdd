//! Delta codecs (raw, RLE, zstd, adaptive). Filled in by the codec work.
