-- Floor for an event: a plain insert returning occurred_at.
\set u random(1, 10000000)
INSERT INTO amba.events (user_id, event, occurred_at, properties)
VALUES ('u' || :u::text, 'purchase', now(), '{"amount": 42}'::jsonb)
RETURNING occurred_at;
