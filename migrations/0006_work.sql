-- Work management: tasks (checklists, attachments, search), projects (members, brief, activity log), wiki.

ALTER TABLE tasks
    ADD COLUMN checklist_total integer NOT NULL DEFAULT 0,
    ADD COLUMN checklist_done integer NOT NULL DEFAULT 0,
    ADD COLUMN attachments_count integer NOT NULL DEFAULT 0,
    ADD COLUMN search_tsv tsvector;
CREATE INDEX tasks_search_tsv ON tasks USING gin (search_tsv);
CREATE INDEX tasks_org_project ON tasks (organization_id, project_id);
CREATE INDEX tasks_org_deal ON tasks (organization_id, deal_id);
CREATE INDEX tasks_tags ON tasks USING gin (tags);
-- "overdue for one assignee": open tasks of an assignee ordered by due date
CREATE INDEX tasks_org_assignee_open_due ON tasks (organization_id, assignee_id, (coalesce(due_date, '9999-12-31'::date)), id)
    WHERE status = 'open';

CREATE TABLE task_checklist_items (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    task_id uuid NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    position integer NOT NULL,
    text text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    done_at timestamptz,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX task_checklist_task ON task_checklist_items (task_id, position);

CREATE TABLE task_attachments (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    task_id uuid NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    name text NOT NULL,
    url text,                 -- an external reference, or NULL for stored content
    sha256 text,              -- stored content: key into attachment_blobs
    size_bytes bigint,
    mime_type text,
    created_by uuid,
    created_at timestamptz NOT NULL
);
CREATE INDEX task_attachments_task ON task_attachments (task_id, created_at, id);

-- Inline attachment content, content-addressed per organization. Written by the command handler before the
-- event is saved (idempotent: same content, same key); not a read model, so rebuilds leave it alone.
CREATE TABLE attachment_blobs (
    organization_id uuid NOT NULL,
    sha256 text NOT NULL,
    content bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, sha256)
);

-- Secrets the server generates for itself when none is configured (e.g. the download-link HMAC key).
CREATE TABLE IF NOT EXISTS app_secrets (
    name text PRIMARY KEY,
    value text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE projects
    ADD COLUMN description text,
    ADD COLUMN deal_id uuid,
    ADD COLUMN start_date date,
    ADD COLUMN end_date date,
    ADD COLUMN budget_cents bigint,
    ADD COLUMN currency text,
    ADD COLUMN created_by uuid,
    ADD COLUMN archived_at timestamptz,
    ADD COLUMN brief jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN brief_updated_at timestamptz;
CREATE INDEX projects_org_client ON projects (organization_id, client_id);

CREATE TABLE project_members (
    organization_id uuid NOT NULL,
    project_id uuid NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    user_id uuid NOT NULL,
    role text NOT NULL,
    added_at timestamptz NOT NULL,
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX project_members_user ON project_members (organization_id, user_id);

CREATE TABLE project_activities (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    project_id uuid NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    kind text NOT NULL,       -- worklog, milestone, comment, or system (archive, members, brief)
    text text NOT NULL,
    minutes integer,
    occurred_on date,
    author_id uuid,
    created_at timestamptz NOT NULL
);
CREATE INDEX project_activities_project ON project_activities (project_id, created_at DESC, id DESC);

CREATE TABLE wiki_categories (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    name text NOT NULL,
    description text,
    created_at timestamptz NOT NULL
);
CREATE INDEX wiki_categories_org ON wiki_categories (organization_id, lower(name));

CREATE TABLE wiki_pages (
    id uuid PRIMARY KEY,
    organization_id uuid NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    category_id uuid,
    parent_id uuid,
    language text NOT NULL,   -- text search configuration, fixed by the event (organization's locale)
    revision integer NOT NULL,
    created_by uuid,
    updated_by uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    search_tsv tsvector
);
CREATE INDEX wiki_pages_org_tree ON wiki_pages (organization_id, category_id, lower(title), id);
CREATE INDEX wiki_pages_parent ON wiki_pages (organization_id, parent_id);
CREATE INDEX wiki_pages_search ON wiki_pages USING gin (search_tsv);

CREATE TABLE wiki_revisions (
    page_id uuid NOT NULL REFERENCES wiki_pages(id) ON DELETE CASCADE,
    revision integer NOT NULL,
    organization_id uuid NOT NULL,
    change text NOT NULL,     -- created, edited, moved, restored
    title text NOT NULL,
    body text NOT NULL,
    category_id uuid,
    parent_id uuid,
    restored_from integer,
    summary text,
    author_id uuid,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (page_id, revision)
);
