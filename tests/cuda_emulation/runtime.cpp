// The runtime of the CUDA host emulation (include/cuda_emulation.h explains the model):
// a pool of host threads, one per CUDA thread of a block; barriers for __syncthreads
// and for the lanes of each warp; the launch loop over the blocks of a grid.
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "cuda_runtime.h"

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace cuda_emulation {
namespace {

constexpr unsigned int kMaxBlockThreads = 1024;
thread_local cudaError_t last_error = cudaSuccess;

double env_number(const char* name, double fallback) {
  const char* value = std::getenv(name);
  return value && *value ? std::atof(value) : fallback;
}
const double kTimeoutSeconds = env_number("CUDA_EMULATION_TIMEOUT", 60);
const bool kJitter = env_number("CUDA_EMULATION_JITTER", 0) != 0;

// With CUDA_EMULATION_JITTER=1: a random yield or short sleep (before barriers).
void jitter() {
  if (!kJitter) return;
  thread_local std::minstd_rand random(static_cast<unsigned int>(
      std::hash<std::thread::id>()(std::this_thread::get_id())));
  const unsigned int r = random() % 8;
  if (r < 3) std::this_thread::yield();
  if (r == 0) std::this_thread::sleep_for(std::chrono::microseconds(random() % 100));
}

// Sleeps until `word` no longer holds `value` (futex; woken by wake_all). With a name,
// aborts after the timeout: some thread never reached the barrier `what`.
void wait_while_equal(std::atomic<uint32_t>& word, uint32_t value, const char* what) {
  const auto start = std::chrono::steady_clock::now();
  while (word.load(std::memory_order_acquire) == value) {
    timespec slice{0, 200 * 1000 * 1000};
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, value,
            what ? &slice : nullptr, nullptr, 0);
    const std::chrono::duration<double> waited = std::chrono::steady_clock::now() - start;
    if (what && waited.count() > kTimeoutSeconds) {
      fail("deadlock: not every thread reached %s within %g s (a __syncthreads or warp "
           "shuffle in divergent code?)", what, kTimeoutSeconds);
    }
  }
}
void wake_all(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

// Where threads meet: every thread of one barrier round must come from the same kind.
enum Site : unsigned int { kSyncThreads = 1, kBlockEnd = 2, kWarp = 4 };
const char* site_names(unsigned int sites) {
  return sites == (kSyncThreads | kBlockEnd)
             ? "__syncthreads and the end of the block (some threads returned early)"
             : "different barriers";
}

// A reusable barrier for `count` threads that counts the nonzero votes of each round.
class Barrier {
 public:
  void reset(int count) { count_ = count; }

  int arrive_and_wait(int vote, Site site, const char* what) {
    jitter();
    const uint32_t generation = generation_.load(std::memory_order_acquire);
    if (vote) votes_.fetch_add(1, std::memory_order_relaxed);
    sites_.fetch_or(site, std::memory_order_relaxed);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 < count_) {
      wait_while_equal(generation_, generation, what);
      return result_;  // stable: the next round cannot finish before this thread arrives
    }
    const unsigned int sites = sites_.exchange(0, std::memory_order_relaxed);
    if (sites & (sites - 1)) fail("threads met at %s", site_names(sites));
    result_ = votes_.exchange(0, std::memory_order_relaxed);
    arrived_.store(0, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    wake_all(generation_);
    return result_;
  }

 private:
  int count_ = 0;
  int result_ = 0;
  std::atomic<int> arrived_{0}, votes_{0};
  std::atomic<unsigned int> sites_{0};
  std::atomic<uint32_t> generation_{0};
};

// One warp's exchange slots. Two sets, alternating per call: a lane writing set s
// for call k + 2 has passed the barrier of call k + 1, so every lane has read call k.
struct Warp {
  Barrier barrier;
  unsigned int lanes = 0;  // the lanes that exist (a mask)
  uint64_t slots[2][32] = {};
  uint8_t set[32] = {};  // per lane: the set of its next call
};

// The pool: worker i is linear thread index i of every block of every launch.
class Runtime {
 public:
  ~Runtime() {
    stopping_.store(true);
    for (auto& worker : workers_) {
      worker->start.fetch_add(1, std::memory_order_release);
      wake_all(worker->start);
      worker->thread.join();
    }
  }

  cudaError_t launch(const cudaLaunchConfig_t& config, Body body, const void* context) {
    const dim3 g = config.gridDim, b = config.blockDim;
    const uint64_t threads = uint64_t(b.x) * b.y * b.z;
    if (threads == 0 || threads > kMaxBlockThreads || b.x > 1024 || b.y > 1024 || b.z > 64 ||
        g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535) {
      return last_error = cudaErrorInvalidConfiguration;
    }
    if (config.dynamicSmemBytes != 0) fail("dynamic shared memory is not emulated");
    if (in_kernel) fail("a launch from device code is not emulated");
    const std::lock_guard<std::mutex> lock(mutex_);  // one grid at a time
    while (workers_.size() < threads) {
      workers_.push_back(std::make_unique<Worker>());
      Worker* worker = workers_.back().get();
      worker->thread = std::thread(&Runtime::work, this, worker, workers_.size() - 1);
    }
    grid_ = g;
    block_ = b;
    threads_ = static_cast<unsigned int>(threads);
    body_ = body;
    context_ = context;
    block_barrier_.reset(threads_);
    for (unsigned int w = 0; w * 32 < threads_; ++w) {
      const unsigned int lanes = threads_ - w * 32 >= 32 ? 32 : threads_ - w * 32;
      warps_[w].lanes = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
      warps_[w].barrier.reset(lanes);
      for (auto& s : warps_[w].set) s = 0;
    }
    finished_.store(0, std::memory_order_relaxed);
    for (unsigned int i = 0; i < threads_; ++i) {
      workers_[i]->start.fetch_add(1, std::memory_order_release);
      wake_all(workers_[i]->start);
    }
    for (uint32_t done; (done = finished_.load(std::memory_order_acquire)) != threads_;) {
      wait_while_equal(finished_, done, nullptr);
    }
    return cudaSuccess;
  }

  int sync_block(int vote) {
    return block_barrier_.arrive_and_wait(vote, kSyncThreads, "a __syncthreads");
  }

  // Publishes `bits` as this lane's; returns the slots of this call, once every lane has.
  const uint64_t* warp_publish(unsigned int mask, uint64_t bits) {
    Warp& warp = warps_[linear / 32];
    const int lane = static_cast<int>(linear % 32);
    if (mask != warp.lanes) {
      fail("a warp shuffle or vote with mask 0x%08x in a warp of lanes 0x%08x (the emulation "
           "needs every lane of the warp)", mask, warp.lanes);
    }
    const int set = warp.set[lane];
    warp.set[lane] ^= 1;
    warp.slots[set][lane] = bits;
    warp.barrier.arrive_and_wait(0, kWarp, "a warp shuffle or vote");
    return warp.slots[set];
  }
  unsigned int warp_lanes() const { return warps_[linear / 32].lanes; }

  static thread_local unsigned int linear;  // this thread's linear index in its block
  static thread_local bool in_kernel;

 private:
  struct Worker {
    std::thread thread;
    std::atomic<uint32_t> start{0};
  };

  void work(Worker* self, size_t index) {
    linear = static_cast<unsigned int>(index);
    in_kernel = true;
    for (uint32_t seen = 0;;) {
      wait_while_equal(self->start, seen, nullptr);
      seen = self->start.load(std::memory_order_acquire);
      if (stopping_.load()) return;
      run_blocks();
      const unsigned int threads = threads_;  // read before finishing: a new launch may set it
      if (finished_.fetch_add(1, std::memory_order_acq_rel) + 1 == threads) wake_all(finished_);
    }
  }

  void run_blocks() {
    const dim3 g = grid_, b = block_;
    threadIdx = {linear % b.x, linear / b.x % b.y, linear / (b.x * b.y)};
    blockDim = b;
    gridDim = g;
    const uint64_t blocks = uint64_t(g.x) * g.y * g.z;
    for (uint64_t i = 0; i < blocks; ++i) {
      const uint64_t k = kJitter ? blocks - 1 - i : i;
      blockIdx = {static_cast<unsigned int>(k % g.x), static_cast<unsigned int>(k / g.x % g.y),
                  static_cast<unsigned int>(k / (uint64_t(g.x) * g.y))};
      body_(context_);
      // No thread starts the next block (and reuses __shared__) before all finish this one.
      block_barrier_.arrive_and_wait(0, kBlockEnd, "the end of a block");
    }
  }

  std::mutex mutex_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<bool> stopping_{false};
  // The current launch (written before the workers start, read-only while they run).
  dim3 grid_, block_;
  unsigned int threads_ = 0;
  Body body_ = nullptr;
  const void* context_ = nullptr;
  Barrier block_barrier_;
  Warp warps_[kMaxBlockThreads / 32];
  std::atomic<uint32_t> finished_{0};
};

thread_local unsigned int Runtime::linear = 0;
thread_local bool Runtime::in_kernel = false;

Runtime& runtime() {
  static Runtime instance;
  return instance;
}

}  // namespace

void fail(const char* format, ...) {
  std::fprintf(stderr, "cuda-emulation error: ");
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  if (Runtime::in_kernel) {
    std::fprintf(stderr, " [block (%u, %u, %u), thread (%u, %u, %u)]", blockIdx.x, blockIdx.y,
                 blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  }
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::abort();
}

int sync_block(int vote) { return runtime().sync_block(vote); }

int lane_id() { return static_cast<int>(Runtime::linear % 32); }

uint64_t warp_exchange(unsigned int mask, uint64_t bits, int src) {
  const uint64_t* slots = runtime().warp_publish(mask, bits);
  if (src < 0) return bits;
  if (src >= 32 || !((runtime().warp_lanes() >> src) & 1u)) {
    fail("a shuffle reads lane %d, which this warp does not have", src);
  }
  return slots[src];
}

unsigned int warp_ballot(unsigned int mask, int vote) {
  const uint64_t* slots = runtime().warp_publish(mask, vote != 0);
  unsigned int ballot = 0;
  for (int lane = 0; lane < 32; ++lane) {
    if ((mask >> lane) & 1u) ballot |= static_cast<unsigned int>(slots[lane]) << lane;
  }
  return ballot;
}

cudaError_t launch(const cudaLaunchConfig_t& config, Body body, const void* context) {
  return runtime().launch(config, body, context);
}

}  // namespace cuda_emulation

cudaError_t cudaGetLastError() {
  const cudaError_t error = cuda_emulation::last_error;
  cuda_emulation::last_error = cudaSuccess;
  return error;
}
cudaError_t cudaPeekAtLastError() { return cuda_emulation::last_error; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }  // launches are synchronous
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}
