-- invoice_payments_org_due (0021) misled the planner right after a bulk import (no statistics yet): it ANDed that
-- index's whole range into every invoice's instalment lookup, 150 ms for 2,000 invoices' totals. Overdue amounts
-- are read per invoice through the primary key (invoice_id, position); lists filter on invoices.next_due_date.
DROP INDEX IF EXISTS invoice_payments_org_due;

-- Each invoice's unpaid instalments beside it (due dates and amounts, same order), so totals compute what is overdue
-- on any day without a join: `crm_invoices_totals` over 10,000 invoices reads one index range of invoices.
ALTER TABLE invoices
    ADD COLUMN unpaid_due_dates date[] NOT NULL DEFAULT '{}',
    ADD COLUMN unpaid_amounts bigint[] NOT NULL DEFAULT '{}';
UPDATE invoices i SET unpaid_due_dates = u.dates, unpaid_amounts = u.amounts
FROM (SELECT invoice_id, array_agg(due_date ORDER BY position) AS dates, array_agg(amount_cents ORDER BY position) AS amounts
      FROM invoice_payments WHERE status = 'not_paid' AND due_date IS NOT NULL GROUP BY invoice_id) u
WHERE u.invoice_id = i.id;
