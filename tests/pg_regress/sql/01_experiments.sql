-- Experiments: create, read, re-weight, change status, delete; every change is audited.
-- (Timestamps are left out of the output so it stays the same from run to run.)
\pset null '(null)'

-- An experiment has two or more weighted variants; the first is the control.
SELECT amba_create_experiment(
    'checkout-button',
    '[{"key": "control", "weight": 50}, {"key": "green", "weight": 50}]',
    name => 'Checkout button colour',
    description => 'Does a green button sell more?'
) - 'created_at' - 'updated_at' AS created;

-- Status defaults to active; it can be given at creation.
SELECT amba_create_experiment('pricing-page', '[{"key": "control", "weight": 1}, {"key": "annual-first", "weight": 1}, {"key": "monthly-first", "weight": 2}]',
                              status => 'draft') ->> 'status' AS status;

SELECT amba_get_experiment('checkout-button') -> 'variants' AS variants;
SELECT amba_get_experiment('no-such-experiment') AS missing;
SELECT e ->> 'key' AS key, e ->> 'status' AS status FROM amba_list_experiments() AS e;

-- Re-weighting changes the odds for users not yet assigned; a weight of 0 switches a
-- variant off for new users; variants can be added (the control stays first).
SELECT amba_update_experiment('checkout-button',
    variants => '[{"key": "control", "weight": 20}, {"key": "green", "weight": 80}, {"key": "red", "weight": 0}]'
) -> 'variants' AS reweighted;

-- Any status can change to any other.
SELECT amba_update_experiment('checkout-button', status => 'paused') ->> 'status' AS paused;
SELECT amba_update_experiment('checkout-button', status => 'ended') ->> 'status' AS ended;
SELECT amba_update_experiment('checkout-button', status => 'active') ->> 'status' AS reactivated;

-- The audit trail: who changed what, with the experiment before and after.
SELECT action, changed_by = session_user AS by_me, api_key_name,
       before ->> 'status' AS status_before, after ->> 'status' AS status_after
  FROM amba_experiment_history('checkout-button');

-- Deleting removes the experiment with its assignments and exposures; history stays.
SELECT amba_delete_experiment('pricing-page') AS deleted, amba_delete_experiment('pricing-page') AS deleted_again;
SELECT action, coalesce(before, after) ->> 'key' AS key, before IS NULL AS no_before, after IS NULL AS no_after
  FROM amba_experiment_history('pricing-page');
