//! Geo-fencing: country lookups from MaxMind databases and the decision
//! rules. Not built yet: the edge serves every country until this crate lands.
