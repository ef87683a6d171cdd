//! CPU delta merge (scalar, AVX2, AVX-512). Filled in by the merge work.
