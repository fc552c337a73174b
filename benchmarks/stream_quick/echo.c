/* A plain C epoll echo server and a ping-pong client, the floor that the
 * stream transport benchmark compares against (see run.py).
 *   echo server PORT
 *   echo client PORT NCONN SECONDS MSGSIZE   -> prints messages/s */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  int port=atoi(argv[2]); char buf[262144];
  struct sockaddr_in a={0}; a.sin_family=AF_INET; a.sin_port=htons(port); a.sin_addr.s_addr=htonl(0x7f000001);
  int one=1;
  if(!strcmp(argv[1],"server")){
    int l=socket(AF_INET,SOCK_STREAM,0); setsockopt(l,SOL_SOCKET,SO_REUSEADDR,&one,4);
    if(bind(l,(void*)&a,sizeof a)||listen(l,128)){perror("bind");return 1;}
    int ep=epoll_create1(0); struct epoll_event ev={.events=EPOLLIN,.data.fd=l}; epoll_ctl(ep,EPOLL_CTL_ADD,l,&ev);
    struct epoll_event evs[64];
    for(;;){int n=epoll_wait(ep,evs,64,-1);
      for(int i=0;i<n;i++){int fd=evs[i].data.fd;
        if(fd==l){int c=accept4(l,0,0,SOCK_NONBLOCK); setsockopt(c,IPPROTO_TCP,TCP_NODELAY,&one,4); struct epoll_event e={.events=EPOLLIN,.data.fd=c}; epoll_ctl(ep,EPOLL_CTL_ADD,c,&e); continue;}
        ssize_t r=recv(fd,buf,sizeof buf,0);
        if(r<=0){if(r<0&&errno==EAGAIN)continue; close(fd); continue;}
        ssize_t off=0; while(off<r){ssize_t w=send(fd,buf+off,r-off,MSG_NOSIGNAL); if(w<0){if(errno==EAGAIN)continue; break;} off+=w;}
      }}
  }
  int nconn=atoi(argv[3]); double secs=atof(argv[4]); int size=atoi(argv[5]);
  int *fds=calloc(nconn,sizeof(int)); int *got=calloc(nconn,sizeof(int));
  int ep=epoll_create1(0); char *msg=malloc(size); memset(msg,'x',size);
  for(int i=0;i<nconn;i++){fds[i]=socket(AF_INET,SOCK_STREAM,0); setsockopt(fds[i],IPPROTO_TCP,TCP_NODELAY,&one,4);
    if(connect(fds[i],(void*)&a,sizeof a)){perror("connect");return 1;}
    struct epoll_event e={.events=EPOLLIN,.data.u32=i}; epoll_ctl(ep,EPOLL_CTL_ADD,fds[i],&e);}
  /* warm-up 0.3 s then measure */
  long count=0; double t0=now(), start=t0+0.3, end=start+secs; int measuring=0;
  for(int i=0;i<nconn;i++) send(fds[i],msg,size,0);
  struct epoll_event evs[64];
  for(;;){double t=now(); if(!measuring&&t>=start){measuring=1;count=0;} if(t>=end)break;
    int n=epoll_wait(ep,evs,64,100);
    for(int k=0;k<n;k++){int i=evs[k].data.u32; ssize_t r=recv(fds[i],buf,sizeof buf,0); if(r<=0){fprintf(stderr,"conn closed\n");return 1;}
      got[i]+=r; while(got[i]>=size){got[i]-=size; count++; send(fds[i],msg,size,0);} }
  }
  printf("%.0f\n", count/secs); return 0;
}
