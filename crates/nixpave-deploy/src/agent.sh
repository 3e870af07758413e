#!/bin/sh
# nixpave activation agent: runs ON THE TARGET, detached from the ssh session that started it.
#
#   agent.sh run  -n NAME -p PROFILE -s STOREPATH -g GOAL -c CONFIRM_S -a ACTIVATE_S -m MAGIC -r AUTO -d STATEDIR -i ID
#   agent.sh wait -n NAME -d STATEDIR -i ID -w ready|final -t TIMEOUT_S
#   agent.sh rollback -n NAME -p PROFILE -g GOAL -a ACTIVATE_S -d STATEDIR -i ID
#
# `run` remembers the current generation, sets the profile, activates, and (magic rollback) waits for the
# deployer's confirmation file. Without it, or when activation fails or hangs, it switches the profile back to
# the previous generation and re-activates that. Generations are never deleted. Every step is recorded in
# STATEDIR/NAME.json (one line of JSON) so the deployer can find out what happened even after losing the
# connection. A deploy's or rollback's output (the agent's and the activation's) goes to STATEDIR/NAME.run.log,
# which the deployer follows while it runs; when it ends it is appended to STATEDIR/NAME.log, the history.
#
# It may start with an empty environment (`env -i`, systemd-run's minimal one) on any Linux, NixOS included:
# the line below becomes nixpave's PATH for targets (nixpave_remote::TARGET_PATH) when the agent is uploaded.
set -u
# @NIXPAVE_PATH_PRELUDE@

MODE=${1:-}
[ $# -gt 0 ] && shift
NAME=system PROFILE= STOREPATH= GOAL=switch CONFIRM=30 ACTIVATE=240 MAGIC=1 AUTO=1 STATEDIR=/var/lib/nixpave/deploy
ID= WAITFOR=final TIMEOUT=300 FOLLOW= RUNAS= AS= CHECKS=0 CONN= LOG_OPEN=
while getopts n:p:s:g:c:a:m:r:d:i:w:t:l:u:k:C: opt; do
  case $opt in
    n) NAME=$OPTARG ;; p) PROFILE=$OPTARG ;; s) STOREPATH=$OPTARG ;; g) GOAL=$OPTARG ;;
    c) CONFIRM=$OPTARG ;; a) ACTIVATE=$OPTARG ;; m) MAGIC=$OPTARG ;; r) AUTO=$OPTARG ;;
    d) STATEDIR=$OPTARG ;; i) ID=$OPTARG ;; w) WAITFOR=$OPTARG ;; t) TIMEOUT=$OPTARG ;;
    l) FOLLOW=$OPTARG ;; u) RUNAS=$OPTARG ;; k) CHECKS=$OPTARG ;; C) CONN=$OPTARG ;;
    *) echo "nixpave-agent: bad option" >&2; exit 2 ;;
  esac
done

STATUS=$STATEDIR/$NAME.json
LOG=$STATEDIR/$NAME.log
CONFIRM_FILE=$STATEDIR/$NAME.confirm
REJECT_FILE=$STATEDIR/$NAME.reject
LOCK=$STATEDIR/$NAME.lock
RUN_LOG=$STATEDIR/$NAME.run.log
PREV_PATH= PREV_GEN= NEW_GEN= FAILED_GEN= STARTED= UP0= NOW= KEPT= WAKE= TICKER= T0=

NL='
'
log() { echo "nixpave-agent: $*"; }

# Removes the files that exist (every deploy of every host runs this agent: no process for nothing).
remove() {
  for f; do
    if [ -e "$f" ] || [ -h "$f" ]; then rm -f "$f"; fi
  done
}

# The clock: one `date` when the agent starts, then the kernel's uptime (read with a builtin) for each record.
clock_start() {
  STARTED=$(date +%s)
  { read -r up _ </proc/uptime; } 2>/dev/null && UP0=${up%%.*}
}
clock_now() {
  if [ -n "$UP0" ] && { read -r up _ </proc/uptime; } 2>/dev/null; then
    NOW=$((STARTED + ${up%%.*} - UP0))
  else
    NOW=$(date +%s)
  fi
}

# True when file $1 holds this deploy's id (read with a builtin: no process per look).
holds_id() {
  held=
  [ -f "$1" ] || return 1
  { IFS= read -r held <"$1" || :; } 2>/dev/null
  [ "$held" = "$ID" ]
}

# The lock is a symlink to the holder's pid: `ln -s` creates it atomically, a dead holder's lock is stale.
lock_holder() {
  holder=$(readlink "$LOCK" 2>/dev/null) || return 1
  [ -n "$holder" ] && kill -0 "$holder" 2>/dev/null && echo "$holder"
}
take_lock() {
  ln -s "$$" "$LOCK" 2>/dev/null && return 0
  lock_holder >/dev/null && return 1
  rm -f "$LOCK"
  ln -s "$$" "$LOCK" 2>/dev/null
}
# Only set as a trap once take_lock succeeded, and a live holder's lock is never taken over: it is ours.
release_lock() { rm -f "$LOCK"; }

# Sets GEN to the generation number the profile symlink $1 points at (PROFILE -> NAME-N-link), empty when
# there is none. A variable, not output: no subshell per call.
generation_of() {
  GEN=
  link=$(readlink "$1" 2>/dev/null) || return 0
  n=${link%-link}
  [ "$n" != "$link" ] || return 0
  n=${n##*-}
  case $n in '' | *[!0-9]*) return 0 ;; esac
  GEN=$n
}

# resolve PATH: R = what `readlink -f PATH` prints, mostly without a process (resolve.sh, shared with the
# deployer's probe).
# @NIXPAVE_RESOLVE@

# Writes the status record atomically (temp file + rename) so a reader never sees half a record. Its log line
# comes first, and a final state first puts the run log into the history: whoever sees the record sees both.
status() {
  state=$1 reason=${2:-}
  log "state=$state${reason:+ reason=$reason}"
  case $state in confirmed | rolled-back | failed | rollback-failed | dry-activated) keep_history ;; esac
  tmp=$STATUS.tmp.$$
  clock_now
  printf '{"id":"%s","name":"%s","profile":"%s","path":"%s","goal":"%s","state":"%s","reason":"%s","previous_path":"%s","previous_generation":%s,"generation":%s,"failed_generation":%s,"started":%s,"updated":%s}\n' \
    "$ID" "$NAME" "$PROFILE" "$STOREPATH" "$GOAL" "$state" "$reason" "$PREV_PATH" \
    "${PREV_GEN:-null}" "${NEW_GEN:-null}" "${FAILED_GEN:-null}" \
    "$STARTED" "$NOW" >"$tmp" && mv -f "$tmp" "$STATUS"
  notify
}

# This run's output (RUN_LOG) and the history (LOG). start_run_log takes the lock holder's run log afresh,
# after saving what an agent that died before its end left in it (a run log newer than the history);
# keep_history appends it to the history when the run is over, and sends whatever follows there directly.
start_run_log() {
  if [ -s "$RUN_LOG" ] && { [ "$RUN_LOG" -nt "$LOG" ] || [ ! -e "$LOG" ]; }; then
    cat "$RUN_LOG" >>"$LOG" 2>/dev/null
  fi
  exec >"$RUN_LOG" 2>&1
  KEPT=
}
keep_history() {
  if [ -z "$KEPT" ]; then
    cat "$RUN_LOG" >>"$LOG" 2>/dev/null
    exec >>"$LOG" 2>&1
    KEPT=1
  fi
}

# Waiting without polling. A waiter (`wait`, or the agent waiting for its confirmation) reads lines from a FIFO
# on fd 9 (one per role, made once and kept: STATEDIR/NAME.wait-ready.fifo, .wait-final.fifo, .agent.fifo);
# whoever changes what it waits for writes a line into it (the agent after each record, the confirmation and
# rejection commands), and a ticker writes "t<waiter's pid>" once a second: the clock for its timeouts, and
# the fallback should a wake-up be missed or go to another waiter of the same role (bash needs no ticker:
# its `read -t` gives up after a second by itself). Opened read-write, a FIFO
# never blocks its writers and never raises SIGPIPE, whether or not a reader still lives; what nobody holds
# open is dropped. Without a FIFO the waiter falls back to sleeping a second.
open_wakeups() {
  WAKE=$1 TICKER= T0=
  if { [ -p "$WAKE" ] || { remove "$WAKE"; mkfifo -m 600 "$WAKE" 2>/dev/null; }; } \
      && { command exec 9<>"$WAKE"; } 2>/dev/null; then
    if [ -n "${BASH_VERSION:-}" ] && uptime_cs; then
      # bash (NixOS's sh) reads with a time limit itself, and the kernel's uptime is the clock: no ticker.
      T0=$CS
    else
      # $$ is the waiter (also in this subshell): the ticker ends with it, even when it was killed. Neither
      # it nor its `sleep` holds the waiter's own streams (an ssh session ends only once nothing holds them),
      # and the `sleep` does not hold the FIFO either.
      (while sleep 1 </dev/null >/dev/null 2>&1 9>&- && kill -0 $$ 2>/dev/null; do echo "t$$"; done) \
        </dev/null >&9 2>/dev/null 9>&- &
      TICKER=$!
    fi
  else
    WAKE=
  fi
}

# Sets CS to the kernel's uptime in hundredths of a second, with builtins; fails when it cannot be read.
uptime_cs() {
  CS=
  { read -r up _ </proc/uptime; } 2>/dev/null || return 1
  case $up in *[0-9].[0-9][0-9]) CS=${up%.*}${up#*.} ;; *) return 1 ;; esac
  # No leading zeros: the shell's arithmetic would read them as octal.
  CS=${CS#"${CS%%[!0]*}"}
  CS=${CS:-0}
}

# Blocks until a wake-up line arrives (at most about a second) and keeps $secs, the seconds waited: by the
# clock with bash, else one second per tick of the ticker.
wake() {
  if [ -n "$T0" ]; then
    IFS= read -r -t 1 w <&9 || w=
    if uptime_cs; then secs=$(((CS - T0) / 100)); else secs=$((secs + 1)); fi
    return 0
  fi
  if [ -n "$WAKE" ]; then IFS= read -r w <&9 || w=t$$; else sleep 1; w=t$$; fi
  if [ "$w" = "t$$" ]; then secs=$((secs + 1)); fi
}

close_wakeups() {
  if [ -n "${TICKER:-}" ]; then kill "$TICKER" 2>/dev/null; fi
  if [ -n "${WAKE:-}" ]; then exec 9>&-; fi
  TICKER= WAKE= T0=
}

# Wakes every waiter of this profile (after the record changed). Builtins only.
notify() {
  for f in "$STATEDIR/$NAME".wait-*.fifo; do
    if [ -p "$f" ]; then { echo s 1<>"$f"; } 2>/dev/null; fi
  done
  return 0
}

# True when this shell runs as user $1 (root is told from /proc with builtins, without `id`).
runs_as() {
  if [ "$1" = root ] && [ -r /proc/self/status ]; then
    while IFS=':	 ' read -r key uid _; do
      if [ "$key" = Uid ]; then
        [ "$uid" = 0 ]
        return
      fi
    done </proc/self/status
  fi
  [ "$1" = "$(id -un)" ]
}

# Activates store path $1 for goal $2 according to what it contains.
activate() {
  if [ -x "$1/bin/switch-to-configuration" ]; then
    $AS "$1/bin/switch-to-configuration" "$2"
  elif [ -x "$1/deploy-rs-activate" ]; then
    [ "$2" = dry-activate ] && { log "deploy-rs-activate has no dry-activate; skipped"; return 0; }
    $AS env PROFILE="$PROFILE" "$1/deploy-rs-activate"
  elif [ -x "$1/activate" ]; then
    [ "$2" = dry-activate ] && { log "activate has no dry-activate; skipped"; return 0; }
    $AS env PROFILE="$PROFILE" "$1/activate"
  else
    log "$1 has no bin/switch-to-configuration, deploy-rs-activate or activate: nothing to run"
  fi
}

# Activates store path $1 for goal $2 in its own session (this script's `activate` mode), killing the whole
# process group after $ACTIVATE seconds (exit 124). A watchdog sleeps the timeout instead of the agent polling.
with_timeout() {
  set -- /bin/sh "$0" activate -p "$PROFILE" -s "$1" -g "$2" -u "$RUNAS"
  if command -v setsid >/dev/null 2>&1; then setsid "$@" & else "$@" & fi
  pid=$!
  expired=$STATEDIR/$NAME.expired.$$
  remove "$expired"
  watchdog "$pid" "$expired" &
  dog=$!
  wait "$pid"
  rc=$?
  kill "$dog" 2>/dev/null
  wait "$dog" 2>/dev/null
  if [ -e "$expired" ]; then
    rm -f "$expired"
    return 124
  fi
  return $rc
}

# Kills process group $1 (TERM, then KILL) after $ACTIVATE seconds and marks file $2; TERM ends it quietly.
watchdog() {
  trap 'kill "${nap_pid:-}" 2>/dev/null; exit 0' TERM
  sleep "$ACTIVATE" &
  nap_pid=$!
  wait "$nap_pid" || exit 0
  : >"$2"
  log "activation still running after ${ACTIVATE}s: killing it"
  # A negative pid is the whole process group (dash's kill knows no `--`).
  kill -TERM "-$1" 2>/dev/null || kill -TERM "$1" 2>/dev/null
  sleep 1
  kill -KILL "-$1" 2>/dev/null || kill -KILL "$1" 2>/dev/null
}

# Obvious lockouts, checked right after activation (succeeds with why in LOCKOUT): the way the deployer came in
# must still work, so a broken network or sshd rolls back at once instead of after the confirm timeout.
# CONN is the deploy session's SSH_CONNECTION (client address, client port, server address, server port).
lockout() {
  LOCKOUT=
  set -- $CONN
  [ $# -ge 4 ] && command -v ip >/dev/null 2>&1 || return 1
  client=$1 server=$3 port=$4
  # Over IPv4 one `ip` answers two questions: with `from` an address that is no longer local the kernel
  # refuses the lookup, so a route found is a route back from the address the deployer came in on. Only
  # when it fails, or over IPv6 (whose lookups accept any source), is the address looked up on its own.
  # Output is parsed with the shell's own pattern matching.
  dev=
  case $server in
    *:*) ;;
    *) route=$(ip route get "$client" from "$server" 2>/dev/null) && route_dev ;;
  esac
  if [ -z "$dev" ]; then
    case $(ip -o addr show 2>/dev/null) in
      *" $server/"*) ;;
      *) LOCKOUT="address: $server, the address the deployer came in on, is gone"; return 0 ;;
    esac
    route=$(ip route get "$client" 2>/dev/null) && route_dev
    if [ -z "$dev" ]; then LOCKOUT="route: no route back to the deployer ($client)"; return 0; fi
  fi
  # The kernel's carrier flag (ip's LOWER_UP): unreadable while the interface is down, 0 without a link.
  carrier=
  { read -r carrier <"/sys/class/net/$dev/carrier"; } 2>/dev/null || carrier=
  if [ "$carrier" != 1 ] && [ -e "/sys/class/net/$dev" ]; then
    LOCKOUT="route: $dev, the interface to the deployer, is down"; return 0
  fi
  # Something must listen on the port at the deployer's address or at every address. The listening sockets
  # come from `ss -l` (netlink: the kernel looks at listeners only); /proc/net/tcp, which the kernel makes by
  # walking every connection of the machine, only when ss is missing or fails (its IPv4 addresses are hex in
  # the machine's byte order: little-endian assumed; an IPv6 address only by its port).
  if listeners=$(ss -ltn "sport = :$port" 2>/dev/null); then
    while read -r state _ _ local _; do
      [ "$state" = LISTEN ] || continue
      addr=${local%:*}; addr=${addr#\[}; addr=${addr%\]}; addr=${addr%%%*}
      case $addr in "$server" | 0.0.0.0 | '*' | ::) return 1 ;; esac
    done <<LISTENERS
$listeners
LISTENERS
  else
    tables=/proc/net/tcp
    if [ -r /proc/net/tcp6 ]; then tables="$tables /proc/net/tcp6"; fi
    if [ ! -r /proc/net/tcp ] || ! command -v awk >/dev/null 2>&1 || awk -v port="$port" -v server="$server" '
        BEGIN { p = sprintf(":%04X", port); n = split(server, o, ".")
                mine = n == 4 ? sprintf("%02X%02X%02X%02X", o[4], o[3], o[2], o[1]) : "" }
        $4 == "0A" && substr($2, length($2) - 4) == p {
          a = substr($2, 1, length($2) - 5)
          if (a ~ /^0+$/ || a == mine || mine == "") found = 1
        }
        END { exit !found }' $tables 2>/dev/null; then
      return 1
    fi
  fi
  LOCKOUT="sshd: nothing listens on port $port any more"
  return 0
}

# Sets dev to the interface of the route `ip route get` printed into $route.
route_dev() {
  dev=
  case $route in *" dev "*) dev=${route#* dev }; dev=${dev%%[ $NL]*} ;; esac
}

# What sshd reads, by content (one process, where `sshd -t` costs ten times more): when the activation left
# it alone, sshd's verdict on it did not change either, and `sshd -t` need not run at all.
# Sets FP.
sshd_fingerprint() {
  FP=
  if command -v sshd >/dev/null 2>&1 && [ -r /etc/ssh/sshd_config ]; then
    FP=$(cksum /etc/ssh/* /etc/ssh/sshd_config.d/* 2>/dev/null)
  fi
  return 0
}

# Prints why and succeeds when sshd rejects its configuration.
sshd_rejects() {
  if command -v sshd >/dev/null 2>&1 && [ -r /etc/ssh/sshd_config ]; then
    if ! out=$(sshd -t 2>&1); then echo "sshd-config: sshd -t rejects the configuration: $out"; return 0; fi
  fi
  return 1
}

# Switches the profile back to the previous generation (never deleting the failed one) and re-activates it.
rollback() {
  reason=$1
  FAILED_GEN=$NEW_GEN
  status rolling-back "$reason"
  if [ -z "$PREV_PATH" ]; then
    # First deploy to this profile: there was no profile before, so there is none after either (the failed
    # generation's link stays, it is only unreferenced by the profile).
    if [ "$GOAL" = switch ] || [ "$GOAL" = boot ]; then rm -f "$PROFILE"; fi
    NEW_GEN=
    status failed "$reason-no-previous-generation"
    return 1
  fi
  if [ "$GOAL" = switch ] || [ "$GOAL" = boot ]; then
    if [ -n "$PREV_GEN" ]; then
      nix-env -p "$PROFILE" --switch-generation "$PREV_GEN" || { status rollback-failed "$reason"; return 1; }
    else
      nix-env -p "$PROFILE" --set "$PREV_PATH" || { status rollback-failed "$reason"; return 1; }
    fi
  fi
  generation_of "$PROFILE"
  NEW_GEN=$GEN
  if with_timeout "$PREV_PATH" "$GOAL"; then
    status rolled-back "$reason"
  else
    status rollback-failed "$reason"
    return 1
  fi
}

do_run() {
  [ -d "$STATEDIR" ] || mkdir -p "$STATEDIR"
  # Nothing here uses relative paths; / keeps the agent from holding the login's directory busy.
  cd / || :
  clock_start
  # Until it holds the lock the agent writes to the history (a refusal, or why it could not take the lock);
  # then this deploy's output starts the run log afresh (the deployer follows it) and joins the history at the end.
  exec >>"$LOG" 2>&1
  if ! take_lock; then
    log "deploy $ID refused: another deploy of $NAME is running (agent pid $(readlink "$LOCK"))"
    exit 75
  fi
  start_run_log
  trap 'close_wakeups; release_lock' EXIT
  log "deploy $ID: $STOREPATH -> $PROFILE (goal $GOAL, confirm ${CONFIRM}s, activation ${ACTIVATE}s)"
  remove "$CONFIRM_FILE" "$REJECT_FILE"
  resolve "$PROFILE"
  PREV_PATH=$R
  generation_of "$PROFILE"
  PREV_GEN=$GEN
  NEW_GEN=$PREV_GEN
  status activating
  if [ "$GOAL" = dry-activate ]; then
    if with_timeout "$STOREPATH" dry-activate; then status dry-activated; else status failed activation-failed; fi
    return 0
  fi
  LOCKOUT_BEFORE= SSHD_BEFORE=
  if [ "$MAGIC" = 1 ]; then
    if lockout; then LOCKOUT_BEFORE=$LOCKOUT; fi
    sshd_fingerprint
    SSHD_BEFORE=$FP
  fi
  if [ "$GOAL" = switch ] || [ "$GOAL" = boot ]; then
    if [ "$PREV_PATH" != "$STOREPATH" ]; then
      nix-env -p "$PROFILE" --set "$STOREPATH" || { status failed profile-set-failed; return 1; }
    fi
    generation_of "$PROFILE"
    NEW_GEN=$GEN
  fi
  with_timeout "$STOREPATH" "$GOAL"
  rc=$?
  if [ $rc -ne 0 ]; then
    if [ $rc -eq 124 ]; then reason=activation-timeout; else reason=activation-failed; fi
    if [ "$AUTO" = 1 ]; then rollback "$reason"; else status failed "$reason"; fi
    return 0
  fi
  # Without magic rollback the agent still waits for the deployer's health checks (-k 1): a failed check
  # rolls back (auto rollback) or is recorded as a failure; no verdict at all keeps the new generation.
  if [ "$MAGIC" != 1 ] && [ "$CHECKS" != 1 ]; then
    status confirmed
    return 0
  fi
  # Only what worked before the activation counts: a network check that already failed, or an sshd
  # configuration the activation did not touch (so one sshd -t would already have rejected), is not a
  # lockout of this deploy.
  if [ "$MAGIC" = 1 ]; then
    why=
    if lockout && [ "$LOCKOUT" != "$LOCKOUT_BEFORE" ]; then
      why=$LOCKOUT
    else
      sshd_fingerprint
      if [ "$FP" != "$SSHD_BEFORE" ]; then why=$(sshd_rejects) || why=; fi
    fi
    if [ -n "$why" ]; then
      log "lockout after activation: $why; rolling back now"
      rollback "lockout-${why%%:*}"
      return 0
    fi
  fi
  # The confirmation and rejection commands write their file, then wake the agent through its FIFO.
  open_wakeups "$STATEDIR/$NAME.agent.fifo"
  status waiting-confirmation
  secs=0
  while [ "$secs" -lt "$CONFIRM" ]; do
    if holds_id "$CONFIRM_FILE"; then
      status confirmed
      return 0
    fi
    if holds_id "$REJECT_FILE"; then
      close_wakeups
      if [ "$MAGIC" = 1 ] || [ "$AUTO" = 1 ]; then rollback health-check-failed; else status failed health-check-failed; fi
      return 0
    fi
    wake
  done
  close_wakeups
  if [ "$MAGIC" = 1 ]; then
    rollback no-confirmation
  else
    log "no verdict from the deployer's health checks in time; magic rollback is off: keeping the new generation"
    status confirmed
  fi
}

# Reads the status record into $REC, $REC_ID and $REC_STATE with shell builtins only (no fork per poll).
read_record() {
  REC= REC_ID= REC_STATE=
  [ -r "$STATUS" ] && IFS= read -r REC < "$STATUS" 2>/dev/null
  case $REC in *'"id":"'*) REC_ID=${REC#*\"id\":\"}; REC_ID=${REC_ID%%\"*} ;; esac
  case $REC in *'"state":"'*) REC_STATE=${REC#*\"state\":\"}; REC_STATE=${REC_STATE%%\"*} ;; esac
}

# With -l 1: copies this deploy's output (RUN_LOG) to stderr as it grows: progress for the deployer. Read
# through fd 8 with the shell's `read`, so following costs no process. The agent starts the file afresh once
# it holds the lock; until then it may still hold an earlier deploy's output, recognised by its first line
# (the agent's "deploy ID:" line) and opened again on the next wake-up. A line still being written is kept
# until its end arrives.
follow_log() {
  [ "$FOLLOW" = 1 ] || return 0
  if [ -z "$LOG_OPEN" ]; then
    [ -f "$RUN_LOG" ] && { command exec 8<"$RUN_LOG"; } 2>/dev/null || return 0
    LOG_OPEN=1 LOG_FIRST=1 LOG_PART=
  fi
  while IFS= read -r line <&8; do
    line=$LOG_PART$line LOG_PART=
    if [ -n "$LOG_FIRST" ]; then
      case $line in
        "nixpave-agent: deploy $ID: "*) LOG_FIRST= ;;
        *) exec 8<&-; LOG_OPEN=; return 0 ;;
      esac
    fi
    printf '%s\n' "$line" >&2
  done
  LOG_PART=$LOG_PART$line
}

# Blocks until this deploy's record reaches the wanted stage, then prints it. The FIFO is in place before the
# record is first read, so a change after that read always wakes the loop.
do_wait() {
  secs=0
  open_wakeups "$STATEDIR/$NAME.wait-$WAITFOR.fifo"
  trap close_wakeups EXIT
  while :; do
    follow_log
    read_record
    if [ "$REC_ID" = "$ID" ]; then
      case $WAITFOR:$REC_STATE in
        ready:waiting-confirmation | *:confirmed | *:rolled-back | *:failed | *:rollback-failed | *:dry-activated)
          follow_log
          if [ -n "${LOG_PART:-}" ]; then printf '%s\n' "$LOG_PART" >&2; fi
          echo "$REC"
          return 0 ;;
      esac
    fi
    # The record is not ours yet and no agent holds the lock: it died (or never started).
    if [ "$REC_ID" != "$ID" ] && [ "$secs" -ge 5 ] && ! lock_holder >/dev/null; then
      echo "nixpave-agent: the agent of deploy $ID is not running; see $LOG" >&2
      return 4
    fi
    if [ "$secs" -ge "$TIMEOUT" ]; then
      echo "nixpave-agent: no answer from deploy $ID after ${TIMEOUT}s; last record:" >&2
      cat "$STATUS" >&2 2>/dev/null
      return 3
    fi
    wake
  done
}

# Manual rollback (`nixpave rollback`): previous generation of the profile, re-activated.
do_rollback() {
  [ -d "$STATEDIR" ] || mkdir -p "$STATEDIR"
  cd / || :
  clock_start
  exec 3>&1 >>"$LOG" 2>&1
  if ! take_lock; then
    echo "nixpave-agent: a deploy of $NAME is running (agent pid $(readlink "$LOCK")); try again later" >&3
    exit 75
  fi
  # Like a deploy's: the run log holds the last operation's output, the history gets it at the end.
  start_run_log
  trap release_lock EXIT
  log "manual rollback $ID of $PROFILE"
  generation_of "$PROFILE"
  PREV_GEN=$GEN
  NEW_GEN=$PREV_GEN
  resolve "$PROFILE"
  STOREPATH=$R
  target=$(nix-env -p "$PROFILE" --list-generations | awk -v cur="$PREV_GEN" '$1 < cur { g = $1 } END { print g }')
  if [ -z "$target" ]; then
    status failed no-previous-generation
    cat "$STATUS" >&3
    return 1
  fi
  status activating manual-rollback
  FAILED_GEN=$PREV_GEN
  nix-env -p "$PROFILE" --switch-generation "$target" || { status rollback-failed manual-rollback; cat "$STATUS" >&3; return 1; }
  NEW_GEN=$target
  PREV_PATH=$STOREPATH
  resolve "$PROFILE"
  STOREPATH=$R
  if with_timeout "$STOREPATH" "$GOAL"; then status rolled-back manual-rollback; else status rollback-failed manual-rollback; fi
  cat "$STATUS" >&3
}

# A deploy or rollback outlives the ssh session that started it (`setsid`, or a systemd unit): no hangup stops
# it, nor the activation it runs.
case $MODE in
  run) trap '' HUP; do_run ;;
  wait) do_wait ;;
  rollback) trap '' HUP; do_rollback ;;
  activate)
    # deploy-rs's `user`: the profile's activation runs as its owner (the agent itself stays root).
    if [ -n "$RUNAS" ] && ! runs_as "$RUNAS"; then
      if command -v runuser >/dev/null 2>&1; then AS="runuser -u $RUNAS --"
      elif command -v sudo >/dev/null 2>&1; then AS="sudo -n -u $RUNAS --"
      else log "cannot run the activation as $RUNAS: neither runuser nor sudo is available"; exit 1
      fi
    fi
    activate "$STOREPATH" "$GOAL" ;;
  *) echo "usage: agent.sh run|wait|rollback [options]" >&2; exit 2 ;;
esac
