-- The hashes of a session's superseded refresh tokens (its latest 100 generations). Presenting
-- one of those is reuse of a copied token and ends the session; a token that never belonged to
-- the session (say, its id with made-up secret) is refused and changes nothing.
ALTER TABLE refresh_sessions ADD COLUMN previous_hashes text[] NOT NULL DEFAULT '{}';
