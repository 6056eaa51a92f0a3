ALTER TABLE "subscription_history" ALTER COLUMN "currency" DROP NOT NULL;--> statement-breakpoint
ALTER TABLE "subscription_history" ADD COLUMN "seq" bigint NOT NULL GENERATED ALWAYS AS IDENTITY (sequence name "subscription_history_seq_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1);
--> statement-breakpoint
-- Every subscription state, written by the database itself: no code path that changes a
-- subscription (plan changes, trials ending, dunning, an org deleted, plan migrations) can forget it.
-- The time is the row's updated_at, which the app sets from its clock (the test clock included).
CREATE OR REPLACE FUNCTION subscription_history_record() RETURNS trigger AS $$
BEGIN
  IF TG_OP = 'UPDATE'
     AND NEW.plan_key IS NOT DISTINCT FROM OLD.plan_key
     AND NEW.plan_version IS NOT DISTINCT FROM OLD.plan_version
     AND NEW.interval IS NOT DISTINCT FROM OLD.interval
     AND NEW.status IS NOT DISTINCT FROM OLD.status THEN
    RETURN NEW;
  END IF;
  INSERT INTO subscription_history (id, subscription_id, org_id, at, plan_key, plan_version, interval, status, mrr)
  SELECT 'shs_' || md5(random()::text || clock_timestamp()::text || NEW.id), NEW.id, NEW.org_id, NEW.updated_at,
    NEW.plan_key, NEW.plan_version, NEW.interval, NEW.status,
    COALESCE(CASE WHEN NEW.interval = 'year' THEN round((v.definition->'price'->>'year')::numeric / 12, 6)
                  ELSE (v.definition->'price'->>'month')::numeric END, 0)
  FROM (SELECT 1) AS one
  LEFT JOIN plan_versions v ON v.plan_key = NEW.plan_key AND v.version = NEW.plan_version;
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;
--> statement-breakpoint
CREATE TRIGGER subscription_history_record AFTER INSERT OR UPDATE ON subscriptions
  FOR EACH ROW EXECUTE FUNCTION subscription_history_record();
--> statement-breakpoint
-- The seed of migration 0016 dated each subscription at its last update (every period close bumps
-- it), which made paying orgs look new; they are as old as their org.
UPDATE subscription_history h SET at = o.created_at
FROM orgs o WHERE h.id LIKE 'shs\_backfill\_%' AND o.id = h.org_id;
