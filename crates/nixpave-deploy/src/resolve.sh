# resolve PATH: sets R to what `readlink -f PATH` prints (empty when PATH does not exist). A directory (a
# system, a profile's generation) and a file that is no symlink are resolved by the shell itself (`cd -P`):
# only a symlink to a file costs a process. The working directory is / afterwards.
# One home for the deploy agent (agent.sh, where it replaces its @NIXPAVE_RESOLVE@ line) and the deployer's
# probe (status.rs), which name a system the same way.
resolve() {
  R=
  if [ ! -e "$1" ]; then :
  elif [ -d "$1" ] && cd -P "$1" 2>/dev/null; then R=$PWD
  elif [ ! -h "$1" ] && [ "${1%/*}" != "$1" ] && cd -P "${1%/*}/" 2>/dev/null; then R=${PWD%/}/${1##*/}
  else R=$(readlink -f "$1" 2>/dev/null) || R=
  fi
  cd / || :
}
