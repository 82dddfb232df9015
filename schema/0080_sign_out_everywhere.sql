-- Signing a user out everywhere (`warden user sign-out`, `warden user passwd`, "Sign out
-- everywhere" on `/oauth/account`): one counter per identity, raised by each sign-out.
--
-- Everything Warden hands out for a user carries the counter as it stood when the chain
-- began — the login session cookie, the authorization code made from it, the refresh
-- tokens and the access tokens (claim `sep`) made from the code — and is refused once the
-- identity's counter has moved past it. Rows written before this migration hold 0, the
-- starting value, so they stay good until the first sign-out.
ALTER TABLE identities ADD COLUMN session_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE oauth_codes ADD COLUMN session_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE oauth_refresh_tokens ADD COLUMN session_epoch BIGINT NOT NULL DEFAULT 0;
