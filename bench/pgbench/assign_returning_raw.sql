-- Floor for a returning user: primary-key select of the stored variant.
\set u random(1, :returning)
SELECT variant FROM amba.assignments WHERE experiment_id = :eid AND user_id = 'r' || :u::text;
