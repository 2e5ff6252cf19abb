//! Playback tokens (EdgeAuth 2.0 compatible): generation and verification as
//! a pure library, the caller passing `now`. Not built yet: the edge accepts
//! every request until this crate lands.
