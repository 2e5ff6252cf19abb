-- An optional SRT passphrase per channel (AES encryption of the SRT link
-- from the encoder). Kept as it is, not hashed: SRT derives its keys from
-- it at every handshake. Empty: none.
ALTER TABLE channels ADD COLUMN srt_passphrase TEXT NOT NULL DEFAULT '';
