-- Per-title country rules (ISO 3166-1 alpha-2, comma-separated).
ALTER TABLE assets ADD COLUMN allow_countries TEXT NOT NULL DEFAULT '';
ALTER TABLE assets ADD COLUMN deny_countries TEXT NOT NULL DEFAULT '';
