// launch.cpp: the launcher of the CPU emulation of the kernels (see cuda_cpu.h): the fiber
// scheduler with its schedules and synccheck, and the access hooks of the instrumented build with
// racecheck, initcheck and memcheck. Called through ctypes by bpgpu/backends/cuda_emulated.py;
// always compiled without instrumentation. Every kernels/*.cu is its own translation unit.
//
//   int bpgpu_cpu_launch(const char* name, const unsigned grid[3], const unsigned block[3],
//                        void** args, bpgpu_cpu_options* options)
//       -> 0; -1 for an unknown kernel name; -2 when a check failed (bpgpu_cpu_error says how)
//   const char* bpgpu_cpu_error()      the message of the last launch that returned -2
//   int bpgpu_cpu_instrumented()       1 when the kernels call the access hooks
//   int bpgpu_cpu_kernel_count()       how many entry points registered themselves
//   const char* bpgpu_cpu_kernel_name(int i)
//
// args[i] points at the i-th kernel argument, as for cuLaunchKernel. Messages name code
// addresses as {pc:HEX}, offsets into this library that the Python side turns into source lines.
//
// Schedules: a block's threads run in rounds, each resuming every unfinished thread once (it runs
// to its next barrier or its end); the order of the threads in each round and of the blocks in
// the grid is ascending, descending, or a seeded random permutation drawn afresh for every round.
// The shared-memory block is filled with 0xFF bytes (NaN in float and double) before each block.
//
// Checks, between two barriers of a block (one round):
//   synccheck  every thread that has not exited waits at the same __syncthreads() call site
//              when the round ends, and no thread exits while others wait
//   racecheck  shared memory: no byte read by one thread and written by another, or written by
//              two; global memory (per 4-byte word, over the whole launch): no word written by two
//              threads, none read by a thread other than its writer unless both are in one block
//              with a barrier between
//   initcheck  no shared-memory byte read in a block before any thread of that block wrote it
//              (reported when the round ends, unless a racecheck hazard explains it first)
//   memcheck   every global access lies inside one of the launch's array arguments
#include <dlfcn.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <ucontext.h>

#include <algorithm>
#include <memory>
#include <numeric>
#include <unordered_map>

#include "cuda_cpu.h"

// the C interface: the only symbols the library exports (it is built with hidden visibility, so
// two builds loaded in one process never share a kernel's __shared__ arrays or the scheduler's
// state)
#define BPGPU_API extern "C" __attribute__((visibility("default")))

#ifndef BPGPU_CPU_INSTRUMENTED
#define BPGPU_CPU_INSTRUMENTED 0
#endif

enum { SCHEDULE_ASCENDING = 0, SCHEDULE_DESCENDING = 1, SCHEDULE_RANDOM = 2 };
enum { CHECK_SYNC = 1, CHECK_RACE = 2, CHECK_INIT = 4, CHECK_MEM = 8 };
constexpr unsigned kHookedChecks = CHECK_RACE | CHECK_INIT | CHECK_MEM;

// What a launch runs under; mirrored by bpgpu/backends/cuda_emulated.py (_Options).
struct bpgpu_cpu_options {
  int schedule;            // SCHEDULE_*
  unsigned checks;         // CHECK_* bits
  uint64_t rng;            // the random schedule's generator state, advanced by the launch
  const uint64_t* arrays;  // per argument [begin, end) of the array it points into; 0, 0: a scalar
  int nargs;
};

std::map<std::string, bpgpu_cpu::Entry>& bpgpu_cpu::registry() {
  static std::map<std::string, Entry> table;
  return table;
}

namespace {

constexpr size_t kStackBytes = 64 * 1024;

struct Site {
  const char* file = nullptr;
  int line = 0;
  bool operator==(const Site& o) const { return line == o.line && strcmp(file, o.file) == 0; }
};

// ---- the running launch ---------------------------------------------------------------------
const char* kernel_name = "";
const bpgpu_cpu::Entry* running = nullptr;
void** running_args = nullptr;
const bpgpu_cpu_options* options = nullptr;
unsigned checks = 0;
bool tracking = false;      // the hooks check accesses (only while a launch runs)
uint64_t block_serial = 0;  // counts blocks over all launches: initcheck's "written in this block"
uint64_t round_serial = 0;  // counts rounds over all launches: racecheck's "between two barriers"
uint32_t block_flat = 0;    // the running block's index in the grid
std::string error;
bool failed = false;

// ---- fibers ---------------------------------------------------------------------------------
ucontext_t scheduler;
std::vector<ucontext_t> fibers;
std::vector<Site> waiting_at;  // where each thread waits (file null: running or exited)
std::vector<char> done;
int current = 0;
bool in_fiber = false;
std::unique_ptr<char[]> stacks;
size_t stack_threads = 0;

void fiber_main() {
  running->invoke(running->fn, running_args);
  done[current] = 1;
}

// ---- where things are -------------------------------------------------------------------------
struct Range {
  uintptr_t lo, hi;
  bool holds(uintptr_t a) const { return a - lo < hi - lo; }
};
std::vector<Range> image;      // this library's loaded segments (its code, constants and globals)
uintptr_t load_bias = 0;       // subtracted from a code address to name it in the library file
uintptr_t shared_lo = 0;       // the calling thread's instance of the library's TLS segment: every
size_t shared_size = 0;        // __shared__ array (cuda_cpu.h makes them thread_local)
thread_local char tls_anchor;  // touching it makes that instance exist in this thread

int find_self(dl_phdr_info* info, size_t, void* self) {
  bool ours = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& p = info->dlpi_phdr[i];
    const uintptr_t lo = info->dlpi_addr + p.p_vaddr;
    if (p.p_type == PT_LOAD && (uintptr_t)self - lo < p.p_memsz) ours = true;
  }
  if (!ours) return 0;
  image.clear();
  load_bias = info->dlpi_addr;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& p = info->dlpi_phdr[i];
    if (p.p_type == PT_LOAD) image.push_back({info->dlpi_addr + p.p_vaddr, info->dlpi_addr + p.p_vaddr + p.p_memsz});
    if (p.p_type == PT_TLS) shared_size = p.p_memsz;
  }
  shared_lo = (uintptr_t)info->dlpi_tls_data;
  return 1;
}

void locate() {
  *(volatile char*)&tls_anchor = 0;
  shared_size = 0;
  dl_iterate_phdr(find_self, (void*)&find_self);
  if (shared_lo == 0) shared_size = 0;
}

// ---- messages -----------------------------------------------------------------------------------
std::string format(const char* f, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, f);
  vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

std::string pc(const void* p) { return format("{pc:%lx}", (unsigned long)((uintptr_t)p - 1 - load_bias)); }

std::string site(const Site& s) { return format("%s:%d", s.file, s.line); }

std::string thread_name(uint32_t t) {
  if (blockDim.y == 1 && blockDim.z == 1) return format("thread %u", t);
  return format("thread (%u,%u,%u)", t % blockDim.x, t / blockDim.x % blockDim.y, t / blockDim.x / blockDim.y);
}

std::string block_name(uint32_t b) {
  return format("block (%u,%u,%u)", b % gridDim.x, b / gridDim.x % gridDim.y, b / gridDim.x / gridDim.y);
}

// "threads 0-99, 101, 103-110": runs of consecutive indices, the first few of many
std::string thread_set(std::vector<uint32_t> ts) {
  std::sort(ts.begin(), ts.end());
  std::string s = ts.size() == 1 ? "thread " : "threads ";
  size_t runs = 0;
  for (size_t i = 0; i < ts.size();) {
    size_t j = i;
    while (j + 1 < ts.size() && ts[j + 1] == ts[j] + 1) ++j;
    if (runs == 6) {
      s += format(", ... (%zu threads)", ts.size());
      break;
    }
    s += runs ? ", " : "";
    s += i == j ? format("%u", ts[i]) : format("%u-%u", ts[i], ts[j]);
    ++runs;
    i = j + 1;
  }
  return s;
}

std::string where() { return format("kernel %s, %s", kernel_name, block_name(block_flat).c_str()); }

// Record the first failure and stop the launch: from a kernel thread, switch to the scheduler for
// good (the thread is never resumed); from the scheduler, return. Every caller has called halt()
// before it formats the message.
void fail(const std::string& message) {
  if (failed) return;
  failed = true;
  error = message;
  if (in_fiber) swapcontext(&fibers[current], &scheduler);
}

// The hooks stop checking: what follows (a message) is the launcher's own work.
void halt() { tracking = false; }

// ---- shared memory: racecheck and initcheck ------------------------------------------------
struct Cell {  // one byte of the shared block
  uint64_t write_round = 0, write_block = 0, read_round = 0;
  const void *write_pc = nullptr, *read_pc = nullptr, *other_pc = nullptr;
  int32_t writer = -1, reader = -1, other_reader = -1;  // other_reader: a second reader this round
};
std::vector<Cell> cells;
struct Pending {  // the first read of a byte that no thread of the block had written
  bool valid = false;
  size_t offset;
  uint32_t thread;
  const void* pc;
} pending;

std::string shared_at(size_t off) {
  return format("shared memory at %p (byte %zu of the shared block)", (void*)(shared_lo + off), off);
}

void race(const char* what, size_t off, uint32_t first, const void* first_pc, const char* first_did,
          const void* second_pc, const char* second_did) {
  halt();
  fail(format("racecheck: %s: %s: %s %s %s at %s and %s %s it at %s, with no __syncthreads() between", where().c_str(),
              what, thread_name(first).c_str(), first_did, shared_at(off).c_str(), pc(first_pc).c_str(),
              thread_name(current).c_str(), second_did, pc(second_pc).c_str()));
}

void shared_access(size_t off, unsigned size, bool write, const void* at) {
  if (!(checks & (CHECK_RACE | CHECK_INIT))) return;
  const int32_t t = current;
  for (size_t i = off; i < off + size && i < cells.size(); ++i) {
    Cell& c = cells[i];
    if (write) {
      if (checks & CHECK_RACE) {
        if (c.write_round == round_serial && c.writer != t)
          race("two writers", i, c.writer, c.write_pc, "writes", at, "writes");
        if (c.read_round == round_serial && (c.reader != t || c.other_reader >= 0)) {
          const bool first = c.reader != t;
          race("write after read", i, first ? c.reader : c.other_reader, first ? c.read_pc : c.other_pc, "reads", at,
               "writes");
        }
      }
      c.writer = t;
      c.write_round = round_serial;
      c.write_block = block_serial;
      c.write_pc = at;
    } else {
      if ((checks & CHECK_RACE) && c.write_round == round_serial && c.writer != t)
        race("read after write", i, c.writer, c.write_pc, "writes", at, "reads");
      if ((checks & CHECK_INIT) && c.write_block != block_serial && !pending.valid)
        pending = Pending{true, i, (uint32_t)t, at};
      if (c.read_round != round_serial) {
        c.read_round = round_serial;
        c.reader = t;
        c.read_pc = at;
        c.other_reader = -1;
      } else if (c.reader != t && c.other_reader < 0) {
        c.other_reader = t;
        c.other_pc = at;
      }
    }
  }
}

// ---- global memory: memcheck and racecheck ---------------------------------------------------
struct Word {  // a 4-byte word of global memory written in this launch
  uint64_t round;
  uint32_t block;
  int32_t thread;
  const void* pc;
};
std::unordered_map<uintptr_t, Word> words;
std::vector<Range> ignored;  // the launch's argument cells and this library's own data

// "byte 40 of argument 3", or how far the address is from the nearest array argument
std::string global_at(uintptr_t a, unsigned size) {
  int best = -1;
  uint64_t best_gap = ~0ull;
  for (int i = 0; i < options->nargs; ++i) {
    const uint64_t lo = options->arrays[2 * i], hi = options->arrays[2 * i + 1];
    if (lo == hi) continue;
    if (a >= lo && a + size <= hi) return format("global memory at %p (byte %lu of argument %d)", (void*)a, a - lo, i);
    const uint64_t gap = a >= hi ? a - hi : lo - a;
    if (gap < best_gap) best_gap = gap, best = i;
  }
  if (best < 0) return format("global memory at %p (no argument is an array)", (void*)a);
  const uint64_t lo = options->arrays[2 * best], hi = options->arrays[2 * best + 1];
  return format("global memory at %p, %lu bytes %s argument %d (an array of %lu bytes)", (void*)a, best_gap,
                a >= hi ? "past the end of" : "before", best, hi - lo);
}

void global_race(const char* what, uintptr_t a, const Word& first, const char* first_did, const void* at,
                 const char* second_did, const char* why) {
  halt();
  fail(format("racecheck: kernel %s: %s: %s of %s %s %s at %s and %s of %s %s it at %s, %s", kernel_name, what,
              thread_name(first.thread).c_str(), block_name(first.block).c_str(), first_did, global_at(a, 4).c_str(),
              pc(first.pc).c_str(), thread_name(current).c_str(), block_name(block_flat).c_str(), second_did,
              pc(at).c_str(), why));
}

void global_access(uintptr_t a, unsigned size, bool write, const void* at) {
  if (checks & CHECK_MEM) {
    bool inside = false;
    for (int i = 0; i < options->nargs && !inside; ++i)
      inside = a >= options->arrays[2 * i] && a + size <= options->arrays[2 * i + 1];
    if (!inside) {
      halt();
      fail(format("memcheck: %s: %s %s %u bytes of %s at %s", where().c_str(), thread_name(current).c_str(),
                  write ? "writes" : "reads", size, global_at(a, size).c_str(), pc(at).c_str()));
    }
  }
  if (!(checks & CHECK_RACE)) return;
  const Word mine{round_serial, block_flat, current, at};
  for (uintptr_t w = a >> 2; w <= (a + size - 1) >> 2; ++w) {
    if (write) {
      auto [it, fresh] = words.try_emplace(w, mine);
      if (fresh) continue;
      Word& old = it->second;
      if (old.block != block_flat || old.thread != current)
        global_race("two writers", w << 2, old, "writes", at, "writes", "so the value left depends on their order");
      old = mine;
    } else {
      auto it = words.find(w);
      if (it == words.end()) continue;
      const Word& old = it->second;
      if (old.block == block_flat && old.thread == current) continue;
      if (old.block != block_flat)
        global_race("read after write", w << 2, old, "writes", at, "reads",
                    "and blocks of one launch never synchronise");
      else if (old.round == round_serial)
        global_race("read after write", w << 2, old, "writes", at, "reads", "with no __syncthreads() between");
    }
  }
}

inline void on_access(void* p, unsigned size, bool write, const void* at) {
  if (!tracking) return;
  const uintptr_t a = (uintptr_t)p;
  if (a - shared_lo < shared_size) return shared_access(a - shared_lo, size, write, at);
  if (a - (uintptr_t)stacks.get() < stack_threads * kStackBytes) return;  // a thread's own locals
  for (const Range& r : ignored)
    if (r.holds(a)) return;
  global_access(a, size, write, at);
}

// ---- the scheduler ------------------------------------------------------------------------------
uint64_t next_random(uint64_t& s) {  // splitmix64: the same sequence on every platform
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void arrange(std::vector<uint32_t>& order, int schedule, uint64_t& rng) {
  std::iota(order.begin(), order.end(), 0u);
  if (schedule == SCHEDULE_DESCENDING) std::reverse(order.begin(), order.end());
  if (schedule == SCHEDULE_RANDOM)
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[next_random(rng) % i]);
}

// The end of a round: every thread has exited or waits at a barrier.
void check_round(uint32_t threads, const std::vector<char>& was_done) {
  if (pending.valid && (checks & CHECK_INIT)) {
    fail(format("initcheck: %s: %s reads %s, which no thread of the block has written, at %s", where().c_str(),
                thread_name(pending.thread).c_str(), shared_at(pending.offset).c_str(), pc(pending.pc).c_str()));
    return;
  }
  if (!(checks & CHECK_SYNC)) return;
  std::vector<uint32_t> exited;
  std::vector<std::pair<Site, std::vector<uint32_t>>> sites;
  for (uint32_t t = 0; t < threads; ++t) {
    if (done[t]) {
      if (!was_done[t]) exited.push_back(t);
      continue;
    }
    auto s = std::find_if(sites.begin(), sites.end(), [&](const auto& e) { return e.first == waiting_at[t]; });
    if (s == sites.end()) s = sites.insert(sites.end(), {waiting_at[t], {}});
    s->second.push_back(t);
  }
  if (sites.empty()) return;
  if (!exited.empty()) {
    fail(format("synccheck: %s: %s exited while %s wait at the __syncthreads() of %s", where().c_str(),
                thread_set(exited).c_str(), thread_set(sites[0].second).c_str(), site(sites[0].first).c_str()));
  } else if (sites.size() > 1) {
    std::string parts;
    for (const auto& s : sites) parts += format("; %s at %s", thread_set(s.second).c_str(), site(s.first).c_str());
    fail(format("synccheck: %s: the threads wait at different __syncthreads() call sites%s", where().c_str(),
                parts.c_str()));
  }
}

int run_block(uint32_t threads, int schedule, uint64_t& rng) {
  if (shared_size) memset((void*)shared_lo, 0xFF, shared_size);
  for (uint32_t t = 0; t < threads; ++t) {
    getcontext(&fibers[t]);
    fibers[t].uc_stack.ss_sp = stacks.get() + t * kStackBytes;
    fibers[t].uc_stack.ss_size = kStackBytes;
    fibers[t].uc_link = &scheduler;
    makecontext(&fibers[t], fiber_main, 0);
    done[t] = 0;
  }
  std::vector<uint32_t> order(threads);
  for (bool live = true; live;) {
    ++round_serial;
    pending.valid = false;
    const std::vector<char> was_done = done;
    arrange(order, schedule, rng);
    for (uint32_t t : order) {
      if (done[t]) continue;
      current = (int)t;
      threadIdx = dim3{t % blockDim.x, t / blockDim.x % blockDim.y, t / blockDim.x / blockDim.y};
      waiting_at[t] = Site{};
      in_fiber = true;
      swapcontext(&scheduler, &fibers[t]);
      in_fiber = false;
      if (failed) return -2;
    }
    check_round(threads, was_done);
    if (failed) return -2;
    live = std::find(done.begin(), done.end(), 0) != done.end();
  }
  return 0;
}

}  // namespace

void bpgpu_cpu::barrier(const char* file, int line) {
  waiting_at[current] = Site{file, line};
  swapcontext(&fibers[current], &scheduler);
}

// ---- the access hooks the instrumented kernels call (GCC's -fsanitize=thread interface) -------
extern "C" {
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
void __tsan_read_range(void* p, unsigned long n) { on_access(p, (unsigned)n, false, __builtin_return_address(0)); }
void __tsan_write_range(void* p, unsigned long n) { on_access(p, (unsigned)n, true, __builtin_return_address(0)); }
#define BPGPU_ACCESS_HOOKS(N)                                                                              \
  void __tsan_read##N(void* p) { on_access(p, N, false, __builtin_return_address(0)); }                    \
  void __tsan_write##N(void* p) { on_access(p, N, true, __builtin_return_address(0)); }                    \
  void __tsan_unaligned_read##N(void* p) { on_access(p, N, false, __builtin_return_address(0)); }          \
  void __tsan_unaligned_write##N(void* p) { on_access(p, N, true, __builtin_return_address(0)); }          \
  void __tsan_volatile_read##N(void* p) { on_access(p, N, false, __builtin_return_address(0)); }           \
  void __tsan_volatile_write##N(void* p) { on_access(p, N, true, __builtin_return_address(0)); }           \
  void __tsan_unaligned_volatile_read##N(void* p) { on_access(p, N, false, __builtin_return_address(0)); } \
  void __tsan_unaligned_volatile_write##N(void* p) { on_access(p, N, true, __builtin_return_address(0)); }
BPGPU_ACCESS_HOOKS(1)
BPGPU_ACCESS_HOOKS(2)
BPGPU_ACCESS_HOOKS(4)
BPGPU_ACCESS_HOOKS(8)
BPGPU_ACCESS_HOOKS(16)
// the guards of function-local statics (the registry) load atomically; the kernels use no atomics
#define BPGPU_ATOMIC_HOOKS(N, T)                                                                       \
  T __tsan_atomic##N##_load(const volatile T* p, int) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); } \
  void __tsan_atomic##N##_store(volatile T* p, T v, int) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
BPGPU_ATOMIC_HOOKS(8, uint8_t)
BPGPU_ATOMIC_HOOKS(16, uint16_t)
BPGPU_ATOMIC_HOOKS(32, uint32_t)
BPGPU_ATOMIC_HOOKS(64, uint64_t)
}

// ---- the C interface ------------------------------------------------------------------------------
BPGPU_API int bpgpu_cpu_kernel_count() { return (int)bpgpu_cpu::registry().size(); }

BPGPU_API const char* bpgpu_cpu_kernel_name(int i) {
  auto it = bpgpu_cpu::registry().begin();
  std::advance(it, i);
  return it->first.c_str();
}

BPGPU_API int bpgpu_cpu_instrumented() { return BPGPU_CPU_INSTRUMENTED; }

BPGPU_API const char* bpgpu_cpu_error() { return error.c_str(); }

BPGPU_API int bpgpu_cpu_launch(const char* name, const unsigned* grid, const unsigned* block, void** args,
                               bpgpu_cpu_options* opt) {
  auto found = bpgpu_cpu::registry().find(name);
  if (found == bpgpu_cpu::registry().end()) return -1;
  failed = false;
  error.clear();
  if ((opt->checks & kHookedChecks) && !BPGPU_CPU_INSTRUMENTED) {
    error = "racecheck, initcheck and memcheck need the instrumented build of the emulation";
    return -2;
  }
  kernel_name = name;
  running = &found->second;
  running_args = args;
  options = opt;
  checks = opt->checks;
  gridDim = dim3{grid[0], grid[1], grid[2]};
  blockDim = dim3{block[0], block[1], block[2]};
  const uint32_t threads = block[0] * block[1] * block[2];
  if (threads > stack_threads) {
    stacks.reset(new char[threads * kStackBytes]);
    stack_threads = threads;
  }
  fibers.assign(threads, ucontext_t{});
  waiting_at.assign(threads, Site{});
  done.assign(threads, 0);
  locate();
  ignored = image;
  ignored.push_back({(uintptr_t)args, (uintptr_t)(args + running->arg_sizes.size())});
  for (size_t i = 0; i < running->arg_sizes.size(); ++i)
    ignored.push_back({(uintptr_t)args[i], (uintptr_t)args[i] + running->arg_sizes[i]});
  if (checks & (CHECK_RACE | CHECK_INIT)) cells.resize(shared_size);
  words.clear();

  std::vector<uint32_t> blocks((size_t)grid[0] * grid[1] * grid[2]);
  arrange(blocks, opt->schedule, opt->rng);
  int rc = 0;
  tracking = (checks & kHookedChecks) != 0;
  for (uint32_t b : blocks) {
    block_flat = b;
    ++block_serial;
    blockIdx = dim3{b % grid[0], b / grid[0] % grid[1], b / grid[0] / grid[1]};
    rc = run_block(threads, opt->schedule, opt->rng);
    if (rc != 0) break;
  }
  tracking = false;
  words.clear();
  return rc;
}
