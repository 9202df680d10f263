-- A delivery given up after the most attempts allowed (`webhooks.max_attempts`): it is marked
-- with `delivered_at` too, so it leaves the due index and no longer holds back its apply's later
-- events; `abandoned_at` tells it apart from one the receiver accepted.
ALTER TABLE webhook_deliveries ADD COLUMN abandoned_at DATETIME(6) NULL;
