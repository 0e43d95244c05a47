#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>
#include <errno.h>
static const char *root; static int mode; static double stop_at; static int rootfd;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static long started = 0, done = 0; static int running = 0; static long calls = 0;
static double now(void){struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec+t.tv_nsec/1e9;}
static void group_sync(void){
  pthread_mutex_lock(&mu);
  long target = started + 1;
  while (done < target) {
    if (!running) { running = 1; long gen = ++started; pthread_mutex_unlock(&mu);
      if (syncfs(rootfd)) perror("syncfs");
      pthread_mutex_lock(&mu); calls++; running = 0; done = gen; pthread_cond_broadcast(&cv);
    } else pthread_cond_wait(&cv, &mu);
  }
  pthread_mutex_unlock(&mu);
}
#define MAXLAT 2000000
static double *lats; static long nlat = 0;
static void *worker(void *arg){
  unsigned seed = (unsigned)(long)arg * 7919 + 1; char buf[65536]; char tmp[512], dir[512], dst[600];
  double *mine = malloc(sizeof(double)*200000); long n = 0;
  while (now() < stop_at) {
    double t0 = now();
    for (int i=0;i<65536;i+=4) *(unsigned*)(buf+i) = rand_r(&seed);
    unsigned a = rand_r(&seed), b = rand_r(&seed), c = rand_r(&seed);
    snprintf(tmp, sizeof tmp, "%s/tmp/%08x%08x%08x.part", root, a, b, c);
    snprintf(dir, sizeof dir, "%s/blobs/%02x/%02x", root, a & 255, (a>>8)&255);
    snprintf(dst, sizeof dst, "%s/%08x%08x%08x", dir, a, b, c);
    int fd = open(tmp, O_WRONLY|O_CREAT|O_EXCL, 0644); if (fd<0){perror("open");exit(1);}
    if (write(fd, buf, sizeof buf) != sizeof buf) {perror("write");exit(1);}
    if (mode==1) fsync(fd);
    close(fd);
    char d1[512]; snprintf(d1, sizeof d1, "%s/blobs/%02x", root, a&255); mkdir(d1, 0755); mkdir(dir, 0755);
    if (rename(tmp, dst)) {perror("rename");exit(1);}
    if (mode==1){ int dfd = open(dir, O_RDONLY); fsync(dfd); close(dfd);} else if (mode==2) group_sync();
    mine[n++] = now()-t0;
  }
  pthread_mutex_lock(&mu); memcpy(lats+nlat, mine, n*sizeof(double)); nlat += n; pthread_mutex_unlock(&mu);
  return 0;
}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int argc, char**argv){
  root = argv[1]; mode = atoi(argv[2]); int conc = atoi(argv[3]); double dur = atof(argv[4]);
  char p[512]; mkdir(root,0755); snprintf(p,sizeof p,"%s/tmp",root); mkdir(p,0755); snprintf(p,sizeof p,"%s/blobs",root); mkdir(p,0755);
  rootfd = open(root, O_RDONLY); lats = malloc(sizeof(double)*MAXLAT);
  stop_at = now()+dur; pthread_t th[256];
  for (long i=0;i<conc;i++) pthread_create(&th[i],0,worker,(void*)i);
  for (int i=0;i<conc;i++) pthread_join(th[i],0);
  qsort(lats,nlat,sizeof(double),cmp);
  const char *names[]={"none","fsync","syncfs"};
  printf("%-6s c=%3d files/s=%7.0f p50=%6.2fms p99=%6.2fms syncfs=%ld\n", names[mode], conc, nlat/dur, lats[nlat/2]*1e3, lats[(long)(nlat*.99)]*1e3, calls);
}
