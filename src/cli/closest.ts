/** The nearest of `candidates` to a mistyped command or flag, if one is near enough to suggest. */
import { distance } from 'fastest-levenshtein';

export function closestCommand(id: string, candidates: string[]): string | undefined {
  let best: { id: string; d: number } | undefined;
  for (const c of candidates) {
    const d = distance(id, c);
    if (!best || d < best.d) best = { id: c, d };
  }
  // Far from everything (e.g. "foo" for "demo"): a suggestion would only mislead.
  return best && best.d <= Math.max(2, Math.ceil(id.length / 2)) ? best.id : undefined;
}
