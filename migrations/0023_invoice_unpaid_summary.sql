-- What each invoice still owes in instalments and when its last one falls due: totals decide "overdue" per row
-- without looking at the instalments unless some fall before and some after the day asked about.
ALTER TABLE invoices
    ADD COLUMN unpaid_cents bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_due_date date;
UPDATE invoices SET unpaid_cents = coalesce((SELECT sum(a) FROM unnest(unpaid_amounts) AS a), 0),
                    last_due_date = (SELECT max(d) FROM unnest(unpaid_due_dates) AS d);
