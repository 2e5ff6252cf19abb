pub(crate) mod db;
pub(crate) mod objects;
