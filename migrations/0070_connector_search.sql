-- Search over every kind of entity (the ChatGPT `search` tool, crm_deals_search): each candidate set comes from
-- an index, so a search stays fast at 100,000 clients and deals.
-- Words of texts as 'simple' tsvectors of their lower-cased, unaccented text (prefix queries: 'offer' finds
-- 'offerta'); contact names and e-mails by trigrams (typos).
CREATE INDEX notes_search ON notes USING gin (to_tsvector('simple', lower(f_unaccent(body))));
CREATE INDEX activities_search ON activities
    USING gin (to_tsvector('simple', lower(f_unaccent(coalesce(subject, '') || ' ' || coalesce(body, '')))));
CREATE INDEX projects_search ON projects
    USING gin (to_tsvector('simple', lower(f_unaccent(name || ' ' || coalesce(description, '')))));
CREATE INDEX client_contacts_search_trgm ON client_contacts
    USING gin (lower(f_unaccent(name || ' ' || coalesce(email, ''))) gin_trgm_ops);
