-- Attachment content is written and released in the same statement as the events that reference it, and
-- counts its references (the same content may be attached to several tasks of an organization): content
-- nobody references any more is deleted with the event that released it. Content left behind by refused
-- adds (written before this change, without an event) is removed here.
ALTER TABLE attachment_blobs ADD COLUMN refs integer NOT NULL DEFAULT 0;
UPDATE attachment_blobs b SET refs = r.n
FROM (SELECT organization_id, sha256, count(*) AS n FROM task_attachments WHERE sha256 IS NOT NULL
      GROUP BY organization_id, sha256) r
WHERE b.organization_id = r.organization_id AND b.sha256 = r.sha256;
DELETE FROM attachment_blobs WHERE refs = 0;
