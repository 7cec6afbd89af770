-- Returning user: amba_assign of a user assigned already.
\set u random(1, :returning)
SELECT amba_assign('bench', 'r' || :u::text);
