//! WebVTT subtitles (placeholder).
