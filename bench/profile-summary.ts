import fs from "node:fs";
import { SourceMap } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Summarises a V8 CPU profile (`node --cpu-prof`, e.g. a benchmark run with BENCH_PROFILE=<dir>):
 * where the time went, by function (self time), by source file and by package. Frames of the built
 * server (dist/) are mapped back to src/ through the source maps.
 *
 * Run: npx tsx bench/profile-summary.ts <file.cpuprofile | dir (newest profile)> [top=25]
 */
interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const [target, topArg] = process.argv.slice(2);
if (!target) {
  console.error("usage: npx tsx bench/profile-summary.ts <file.cpuprofile | dir> [top]");
  process.exit(2);
}
let file = target;
if (fs.statSync(target).isDirectory()) {
  const newest = fs
    .readdirSync(target)
    .filter((f) => f.endsWith(".cpuprofile"))
    .map((f) => path.join(target, f))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)[0];
  if (!newest) throw new Error(`no .cpuprofile in ${target}`);
  file = newest;
}
const top = Number(topArg ?? 25);
const profile = JSON.parse(fs.readFileSync(file, "utf8")) as Profile;

const root = path.resolve(import.meta.dirname, "..");
const maps = new Map<string, SourceMap | undefined>();
function mapFrame(frame: CallFrame): { where: string; file: string } {
  const { url, lineNumber, columnNumber } = frame;
  if (!url) return { where: "(native)", file: "(native)" };
  let filePath = url;
  if (url.startsWith("file://")) filePath = fileURLToPath(url);
  if (filePath.startsWith(path.join(root, "dist"))) {
    if (!maps.has(filePath)) {
      let map: SourceMap | undefined;
      try {
        map = new SourceMap(JSON.parse(fs.readFileSync(`${filePath}.map`, "utf8")));
      } catch {
        map = undefined;
      }
      maps.set(filePath, map);
    }
    const map = maps.get(filePath);
    const entry = map?.findEntry(lineNumber, columnNumber) as
      | { originalSource?: string; originalLine?: number }
      | undefined;
    if (entry?.originalSource && entry.originalLine !== undefined) {
      const source = entry.originalSource.startsWith("file://")
        ? fileURLToPath(entry.originalSource)
        : path.resolve(path.dirname(filePath), entry.originalSource);
      const rel = path.relative(root, source);
      return { where: `${rel}:${entry.originalLine + 1}`, file: rel };
    }
  }
  const rel = filePath.startsWith(root) ? path.relative(root, filePath) : filePath;
  return { where: `${rel}:${lineNumber + 1}`, file: rel };
}

function packageOf(file: string): string {
  const nm = file.lastIndexOf("node_modules/");
  if (nm >= 0) {
    const rest = file.slice(nm + "node_modules/".length).split("/");
    return rest[0]?.startsWith("@") ? `${rest[0]}/${rest[1]}` : (rest[0] ?? file);
  }
  if (file.startsWith("src/")) return `src/${file.split("/")[1]}`;
  if (file.startsWith("node:") || file === "(native)") return "node (runtime, GC, I/O)";
  return file;
}

const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parentOf = new Map<number, number>();
for (const node of profile.nodes) for (const child of node.children ?? []) parentOf.set(child, node.id);
const selfUs = new Map<number, number>();
let total = 0;
profile.samples.forEach((id, i) => {
  const dt = profile.timeDeltas[i] ?? 0;
  selfUs.set(id, (selfUs.get(id) ?? 0) + dt);
  total += dt;
});
let idle = 0;
const byFunction = new Map<string, number>();
/** For each function, the self time by the nearest caller in our own code or a package (not the runtime). */
const callers = new Map<string, Map<string, number>>();
const byFile = new Map<string, number>();
const byPackage = new Map<string, number>();
for (const [id, us] of selfUs) {
  const node = byId.get(id);
  if (!node) continue;
  const name = node.callFrame.functionName || "(anonymous)";
  if (name === "(idle)") {
    idle += us;
    continue;
  }
  const { where, file: f } = mapFrame(node.callFrame);
  const key = `${name}  ${where}`;
  byFunction.set(key, (byFunction.get(key) ?? 0) + us);
  let parent = parentOf.get(id);
  let via = "";
  for (let depth = 0; parent !== undefined && depth < 30; depth++) {
    const frame = (byId.get(parent) as ProfileNode).callFrame;
    const mapped = mapFrame(frame);
    if (mapped.file.startsWith("src/") || mapped.file.includes("node_modules/")) {
      via = `${frame.functionName || "(anonymous)"}  ${mapped.where}`;
      break;
    }
    parent = parentOf.get(parent);
  }
  const perCaller = callers.get(key) ?? new Map<string, number>();
  perCaller.set(via || "(runtime only)", (perCaller.get(via || "(runtime only)") ?? 0) + us);
  callers.set(key, perCaller);
  byFile.set(f, (byFile.get(f) ?? 0) + us);
  const pkg = name === "(garbage collector)" ? "(garbage collector)" : packageOf(f);
  byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + us);
}
const busy = total - idle;
const pct = (us: number) => `${((100 * us) / busy).toFixed(1).padStart(5)}%`;
const print = (title: string, map: Map<string, number>, n: number) => {
  console.log(`\n${title}`);
  for (const [key, us] of [...map].sort((a, b) => b[1] - a[1]).slice(0, n)) {
    console.log(`${pct(us)}  ${(us / 1000).toFixed(0).padStart(7)} ms  ${key}`);
  }
};
console.log(`${file}`);
console.log(
  `${(total / 1e6).toFixed(1)} s profiled, ${((100 * idle) / total).toFixed(1)}% idle; percentages are of busy time`,
);
print("Self time by package / src module:", byPackage, 15);
print("Self time by file:", byFile, 20);
print("Self time by function:", byFunction, top);
console.log("\nNearest callers in src/ or a package, for the top native and runtime functions:");
for (const [key, us] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top)) {
  if (!key.includes("(native)") && !key.includes(" node:")) continue;
  const perCaller = [...(callers.get(key) ?? new Map<string, number>())]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 4);
  console.log(`${pct(us)}  ${key}`);
  for (const [via, v] of perCaller) console.log(`         ${pct(v)}  ← ${via}`);
}
