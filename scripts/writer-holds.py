#!/usr/bin/env python3
"""Sets each slow hold of SQLite's writer beside what the writer connection's thread did
meanwhile, from a server log (hearth::meta::writer_holds=debug: 'slow hold of the writer') and a
kernel trace taken by scripts/trace-writer-holds.sh.

    scripts/writer-holds.py SERVER_LOG KERNEL_TRACE [--each]

The writer connection's thread is the sqlx-sqlite worker that wakes the uploads' batching
thread (hearth-sqlite-uploads). Over each slow hold its time is split into: on a core (run),
waiting for one (runnable), blocked in the kernel (D, with the reason read from its stack) and
asleep (S: waiting for the next statement from the task that holds the writer). A paused
checkpoint pass works on the checkpointer's own connection: for its holds, that thread (the
busiest other database thread). Also counted: who ran just before the thread got a core back."""
import bisect
import collections
import datetime
import re
import sys

STATES = ('run', 'runnable', 'blocked', 'asleep')
# Frames of the scheduler itself, skipped when naming why a thread blocked.
SCHEDULER = {'trace_event_raw_event_sched_switch', '__traceiter_sched_switch', '__schedule', 'schedule',
             'io_schedule', 'schedule_timeout', 'schedule_preempt_disabled', 'io_schedule_timeout', 'bit_wait_io'}
# The first of these found in a blocked thread's stack names the reason (an fsync's wait for
# pages under writeback counts as the fsync).
REASONS = [('balance_dirty_pages', 'dirty-page throttling'), ('fsync', 'fsync'), ('fdatasync', 'fsync'),
           ('folio_wait_writeback', 'page under writeback'), ('jbd2', 'journal'), ('rwsem', 'inode lock'),
           ('filemap_read', 'read'), ('read_folio', 'read'), ('readahead', 'read'), ('filemap_fault', 'page fault')]
FIELD = re.compile(r'(\w+)=(\S+)')


def slow_holds(log_path):
    """(start, end, work, ms) in wall-clock seconds; the log line is written as the hold ends."""
    ansi = re.compile(r'\x1b\[[0-9;]*m')
    holds = []
    for line in open(log_path, errors='replace'):
        line = ansi.sub('', line)
        if 'slow hold of the writer' not in line:
            continue
        end = datetime.datetime.fromisoformat(line.split()[0].replace('Z', '+00:00')).timestamp()
        work = re.search(r'work="?(\w+)', line).group(1)
        ms = float(re.search(r'held_ms=([0-9.]+)', line).group(1))
        holds.append((end - ms / 1000, end, work, ms))
    return holds


class Trace:
    def __init__(self, path):
        self.offset = None  # wall clock minus the trace's monotonic clock
        self.first = None
        self.events = collections.defaultdict(list)  # tid -> [(t, 'in'|'out'|'wake', state)]
        self.stacks = collections.defaultdict(list)  # tid -> [(t, [frames])]
        self.handed_by = collections.defaultdict(list)  # tid -> [(t, comm that ran before it)]
        self.wakes_uploads = collections.Counter()
        self.database_threads = set()
        stack = None
        for line in open(path, errors='replace'):
            if line.startswith(' => '):
                if stack is not None:
                    stack.append(line[4:].strip().split('+')[0])
                continue
            stack = None
            parts = line.split(None, 4)
            if line.startswith('#') or len(parts) < 5:
                continue
            try:
                t = float(parts[3].rstrip(':'))
            except ValueError:
                continue
            self.first = t if self.first is None else self.first
            comm, tid = parts[0].rsplit('-', 1)
            rest = parts[4]
            if rest.startswith('tracing_mark_write: REALTIME'):
                self.offset = float(rest.split()[2]) - t
            elif rest.startswith('<stack trace>'):
                stack = []
                self.stacks[int(tid)].append((t, stack))
            elif rest.startswith('sched_switch:'):
                f = dict(FIELD.findall(rest))
                if f['prev_comm'].startswith('sqlx-sqlite'):
                    self.database_threads.add(int(f['prev_pid']))
                self.events[int(f['prev_pid'])].append((t, 'out', f['prev_state']))
                self.events[int(f['next_pid'])].append((t, 'in', ''))
                self.handed_by[int(f['next_pid'])].append((t, f['prev_comm']))
            elif rest.startswith('sched_wakeup:'):
                f = dict(FIELD.findall(rest))
                self.events[int(f['pid'])].append((t, 'wake', ''))
                if f['comm'].startswith('hearth-sqlite') and comm.strip().startswith('sqlx-sqlite'):
                    self.wakes_uploads[int(tid)] += 1
        if self.offset is None:
            sys.exit('no REALTIME marker in the trace')
        for events in self.events.values():
            events.sort()
        self.times = {tid: [e[0] for e in events] for tid, events in self.events.items()}
        self.stack_times = {tid: [s[0] for s in stacks] for tid, stacks in self.stacks.items()}

    def writers(self):
        """The writer connection's threads (one per server process the trace saw): those that
        woke the uploads' batching thread, leaving out the few wake-ups other threads made."""
        most = max(self.wakes_uploads.values(), default=0)
        return [tid for tid, n in self.wakes_uploads.items() if n >= most / 100]

    def why_blocked(self, tid, t):
        times = self.stack_times.get(tid, [])
        i = bisect.bisect_left(times, t - 0.003)
        near = [self.stacks[tid][j] for j in range(i, min(i + 3, len(times)))]
        best = min(near, key=lambda s: abs(s[0] - t), default=None)
        if best is None or abs(best[0] - t) > 0.003:
            return '?'
        frames = [f for f in best[1] if f not in SCHEDULER]
        for key, label in REASONS:
            if any(key in f for f in frames):
                return label
        return '/'.join(frames[:3]) or '?'

    def states(self, tid, start, end):
        """Seconds of [start, end] (trace clock) the thread spent in each state, and blocked by reason."""
        spent, blocked = collections.Counter(), collections.Counter()
        times, events = self.times.get(tid, []), self.events.get(tid, [])
        i = max(0, bisect.bisect_left(times, start) - 1)
        while i > 0 and events[i][1] == 'wake':
            i -= 1
        state, since, why = None, start, None
        for t, kind, prev_state in events[i:bisect.bisect_right(times, end)]:
            if kind == 'wake':
                if state in ('run', 'runnable'):
                    continue
                new = 'runnable'
            elif kind == 'in':
                new = 'run'
            else:
                new = 'runnable' if prev_state.startswith('R') else 'blocked' if 'D' in prev_state else 'asleep'
            if state is not None and t > start:
                spent[state] += t - max(since, start)
                if state == 'blocked':
                    blocked[why] += t - max(since, start)
            if new == 'blocked':
                why = self.why_blocked(tid, t)
            state, since = new, t
        if state is not None:
            spent[state] += end - max(since, start)
            if state == 'blocked':
                blocked[why] += end - max(since, start)
        return spent, blocked


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    holds = slow_holds(sys.argv[1])
    trace = Trace(sys.argv[2])
    writers = trace.writers()
    mostly = collections.defaultdict(collections.Counter)
    share = collections.defaultdict(collections.Counter)
    handed_by = collections.Counter()
    uncovered = 0
    for start, end, work, ms in holds:
        s, e = start - trace.offset, end - trace.offset
        best = None
        # A paused checkpoint pass runs on the checkpointer's own connection while it holds
        # the writer: the busiest other database thread.
        threads = writers if work != 'checkpoints' else trace.database_threads - set(writers)
        for tid in threads:
            spent, blocked = trace.states(tid, s, e)
            busy = spent['run'] + spent['runnable'] + spent['blocked']
            if sum(spent.values()) > 0 and (best is None or busy > best[0]):
                best = (busy, tid, spent, blocked)
        if s < trace.first or best is None:
            uncovered += 1
            continue
        _, tid, spent, blocked = best
        handed_by.update(comm for t, comm in trace.handed_by[tid] if s <= t <= e)
        top = max(STATES, key=lambda k: spent[k])
        if top == 'blocked' and blocked:
            top += ' (' + blocked.most_common(1)[0][0] + ')'
        mostly[work][top] += 1
        share[work]['held'] += ms
        share['all']['held'] += ms
        for key, seconds in list(spent.items()) + [('blocked by ' + k, v) for k, v in blocked.items()]:
            share[work][key] += seconds * 1000
            share['all'][key] += seconds * 1000
        if '--each' in sys.argv:
            parts = ' '.join(f'{k} {spent[k] * 1000:.1f}' for k in STATES)
            why = ', '.join(f'{k} {v * 1000:.1f}' for k, v in blocked.most_common(3))
            when = datetime.datetime.fromtimestamp(end, datetime.timezone.utc).strftime('%H:%M:%S.%f')
            print(f'{when} {work:11s} {ms:6.1f} ms: {parts} (ms); blocked: {why or "-"}')
    print(f'slow holds (over 10 ms): {len(holds)}, {uncovered} outside the trace; writer threads {writers}')
    for work in sorted(share, key=lambda w: (w == 'all', w)):
        held = share[work]['held']
        count = sum(mostly[work].values()) if work != 'all' else len(holds) - uncovered
        spent = ', '.join(f'{k} {v / held * 100:.0f} %' for k, v in share[work].most_common() if k != 'held')
        print(f'{work}: {count} slow holds, {held:.0f} ms; its thread meanwhile: {spent}')
        if work != 'all':
            print(f'    mostly: {dict(mostly[work])}')
    print('ran just before that thread got a core back:', handed_by.most_common(8))


if __name__ == '__main__':
    main()
