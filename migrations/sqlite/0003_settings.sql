-- Server-wide settings. "secured" is set when the first token is created and never unset by
-- revoking or deleting tokens: a server that once required tokens must not silently reopen.
-- Keep in lockstep with the other migrations folder.
CREATE TABLE settings (
    name  TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO settings (name, value) SELECT 'secured', 'true' WHERE EXISTS (SELECT 1 FROM tokens);
