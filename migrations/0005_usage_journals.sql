CREATE TABLE "usage_journals" (
	"journal_id" text PRIMARY KEY NOT NULL,
	"epoch" integer DEFAULT 0 NOT NULL,
	"committed_seq" bigint DEFAULT 0 NOT NULL,
	"committed_through_ms" bigint NOT NULL,
	"heartbeat_at" timestamp with time zone DEFAULT now() NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
