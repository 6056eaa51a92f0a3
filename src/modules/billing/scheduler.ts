import { z } from "zod";
import { defineJob } from "../jobs/define.js";
import { runBilling } from "./run.js";

/**
 * The billing run as a scheduled job (every minute, by whichever process gets the slot; closing a
 * period locks its subscription, so overlapping runs never double up). With the test clock it runs
 * after every advance instead (jobs/runtime.ts).
 */
export const billingRunJob = defineJob({
  name: "billing.run",
  schema: z.object({}).strict(),
  // The next slot is a minute away: no retries pile up behind a failing run.
  attempts: 1,
  run: async (deps) => {
    await runBilling(deps);
  },
});
