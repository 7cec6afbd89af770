-- The hand-written floor for amba_results: the same three counts per variant, as a
-- careful analyst would write them (psql variables: key, event).
--   assigned: users assigned to the variant
--   exposed: those with an exposure
--   converted: exposed users whose latest `event` is at or after their assignment
SELECT a.variant,
       count(*) AS assigned,
       count(x.user_id) AS exposed,
       count(*) FILTER (WHERE x.user_id IS NOT NULL AND c.last_at >= a.assigned_at) AS converted
  FROM amba.assignments a
  LEFT JOIN amba.exposures x
         ON x.experiment_id = a.experiment_id AND x.user_id = a.user_id
  LEFT JOIN (SELECT user_id, max(occurred_at) AS last_at
               FROM amba.events
              WHERE event = :'event'
              GROUP BY user_id) c
         ON c.user_id = a.user_id
 WHERE a.experiment_id = (SELECT id FROM amba.experiments WHERE key = :'key')
 GROUP BY a.variant
 ORDER BY a.variant
