-- Won/lost counts and won value per day, pipeline and owner, maintained by the deals projection as deals
-- close, reopen, change value, pipeline or owner, or are deleted: revenue stats sum a few hundred rows
-- instead of scanning every closed deal. NULL pipeline/owner are stored as the nil uuid (portable unique key).
CREATE TABLE deal_daily_stats (
    organization_id uuid NOT NULL,
    day date NOT NULL,
    pipeline_id uuid NOT NULL,
    owner_id uuid NOT NULL,
    won integer NOT NULL DEFAULT 0,
    lost integer NOT NULL DEFAULT 0,
    won_cents bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (organization_id, day, pipeline_id, owner_id)
);
