"""The Lua scripts of the Redis queue: every change of a job record's state is one script, so
a cancel racing a worker's start, or a late worker racing a retry, cannot leave a record
half-changed. A worker's scripts carry its ``attempt`` number and change nothing once the job
has been handed to another worker.

Keys are ``t2i:<queue>:...`` (``RedisJobStore.key``); the job record is the hash
``job:<id>`` (state, params, progress, images, error, failure, timestamps, worker, attempt).
"""
from __future__ import annotations

from redis import Redis
from redis.commands.core import Script

# KEYS: job, jobs, seq, queued, client, init.
# ARGV: id, client, params, created_at, steps, max_per_client, max_queue, init_png or "", limits (JSON).
SUBMIT = """
local mine = redis.call('SCARD', KEYS[5])
if mine >= tonumber(ARGV[6]) then return {-1, mine} end
local queued = redis.call('SCARD', KEYS[4])
if queued >= tonumber(ARGV[7]) then return {-2, queued} end
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'client', ARGV[2], 'state', 'queued', 'params', ARGV[3],
           'images', '[]', 'created_at', ARGV[4], 'seq', seq, 'attempt', 0, 'step', 0, 'total', ARGV[5],
           'limits', ARGV[9])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[1])
if ARGV[8] ~= '' then redis.call('SET', KEYS[6], ARGV[8]) end
return {seq, 0}
"""

# A worker takes the job. "running" is accepted too: RQ only hands a running
# job out again after its worker was found dead. KEYS: job, queued, running.
# ARGV: id, worker, started_at. Returns {attempt or 0, state before}.
BEGIN = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then return {0, state or ''} end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[2], 'started_at', ARGV[3], 'step', 0, 'has_preview', 0)
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return {attempt, state}
"""

# KEYS: job, cancel flag, preview. ARGV: attempt, step, total, preview png or "", preview ttl.
# Returns 0: go on, 1: cancel asked for, 2: the job is no longer this attempt's, 3: skip asked for.
REPORT = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then
  return 2
end
redis.call('HSET', KEYS[1], 'step', ARGV[2], 'total', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
  redis.call('HSET', KEYS[1], 'has_preview', 1)
end
local flag = redis.call('GET', KEYS[2])
if not flag then return 0 end
if flag == 'skip' then return 3 end
return 1
"""

# KEYS: job, running, unstored, pngs, init, cancel. ARGV: id, attempt, images, params,
# finished_at, key prefix, partial (0/1), then one PNG per image.
FINISH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[4])
for i = 8, #ARGV do redis.call('HSET', KEYS[4], i - 8, ARGV[i]) end
redis.call('HSET', KEYS[1], 'state', 'done', 'images', ARGV[3], 'params', ARGV[4], 'finished_at', ARGV[5], 'error', '',
           'failure', '', 'partial', ARGV[7])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SREM', ARGV[6] .. 'client:' .. redis.call('HGET', KEYS[1], 'client'), ARGV[1])
redis.call('DEL', KEYS[5], KEYS[6])
return 1
"""

# failed / cancelled. KEYS: job, queued, running, init, cancel, unstored, pngs. ARGV: id, state,
# reason, finished_at, key prefix, attempt ('' any), only from this state ('' queued or running),
# failure (JSON, '' for none), then for a run stopped early its images (JSON), params (JSON) and
# one PNG per image.
END = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then return 0 end
if ARGV[7] ~= '' and state ~= ARGV[7] then return 0 end
if ARGV[6] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[6] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'error', ARGV[3], 'finished_at', ARGV[4], 'failure', ARGV[8])
if #ARGV > 10 then  -- the partial images, kept for the web app like a done job's
  redis.call('DEL', KEYS[7])
  for i = 11, #ARGV do redis.call('HSET', KEYS[7], i - 11, ARGV[i]) end
  redis.call('HSET', KEYS[1], 'images', ARGV[9], 'params', ARGV[10], 'partial', 1)
  redis.call('SADD', KEYS[6], ARGV[1])
end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SREM', ARGV[5] .. 'client:' .. redis.call('HGET', KEYS[1], 'client'), ARGV[1])
redis.call('DEL', KEYS[4], KEYS[5])
return 1
"""

# The job back in the queue, its progress reset, with a note why (ARGV[note]).
_BACK_IN_QUEUE = """
redis.call('HSET', KEYS[1], 'state', 'queued', 'step', 0, 'has_preview', 0, 'note', ARGV[{note}])
redis.call('HDEL', KEYS[1], 'started_at')
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# A running job whose worker died goes back to the queue (RQ re-enqueues it).
# KEYS: job, queued, running. ARGV: id, note.
REQUEUE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then return 0 end
""" + _BACK_IN_QUEUE.format(note=2)

# A running attempt gives its job back to the queue: a long Redis outage stopped it, or its
# worker was asked to stop. KEYS: job, queued, running, cancel flag. ARGV: id, attempt, note,
# counted (0/1), most counted hand-backs. Returns 1: queued again, 0: no longer this attempt's,
# -1: handed back too often (the caller fails it), -2: its owner asked for a cancel or a skip
# (not queued again: the caller ends it as asked).
HAND_BACK = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then
  return 0
end
if redis.call('EXISTS', KEYS[4]) == 1 then return -2 end
if ARGV[4] == '1' then
  if tonumber(redis.call('HGET', KEYS[1], 'outages') or '0') >= tonumber(ARGV[5]) then return -1 end
  redis.call('HINCRBY', KEYS[1], 'outages', 1)
end
""" + _BACK_IN_QUEUE.format(note=3)

# A job record rebuilt from its images on disk (Redis lost the records). KEYS: job, jobs, seq.
# ARGV: id, client, params, images, created_at, finished_at, partial. Returns 0 if it exists.
RESTORE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'client', ARGV[2], 'state', 'done', 'params', ARGV[3], 'images', ARGV[4],
           'created_at', ARGV[5], 'finished_at', ARGV[6], 'seq', seq, 'attempt', 0, 'step', 0, 'total', 0,
           'partial', ARGV[7], 'error', '', 'restored', 1)
redis.call('ZADD', KEYS[2], seq, ARGV[1])
return 1
"""

# A finished job and everything it left. KEYS: job, jobs, unstored, pngs, preview, init, cancel. ARGV: id.
DELETE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'done' and state ~= 'failed' and state ~= 'cancelled' then return 0 end
redis.call('DEL', KEYS[1], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""


_ALL = {"submit": SUBMIT, "begin": BEGIN, "report": REPORT, "finish": FINISH, "end": END, "requeue": REQUEUE,
        "delete": DELETE, "hand_back": HAND_BACK, "restore": RESTORE}


def register(redis: Redis) -> dict[str, Script]:
    """The scripts by name, registered on ``redis`` (each sent once, then run by its hash)."""
    return {name: redis.register_script(text) for name, text in _ALL.items()}
