-- An event: amba_track (validates, appends, returns occurred_at).
\set u random(1, 10000000)
SELECT amba_track('u' || :u::text, 'purchase', '{"amount": 42}'::jsonb);
