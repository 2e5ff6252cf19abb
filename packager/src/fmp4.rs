//! Reading samples out of CMAF fragments (placeholder).
