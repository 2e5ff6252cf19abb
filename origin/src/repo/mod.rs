pub(crate) mod catalog;
