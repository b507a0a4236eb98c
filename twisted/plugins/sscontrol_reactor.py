from twisted.application.reactors import Reactor

sscontrolEpoll = Reactor("sscontrol-epoll", "sscontrold.reactor", "epoll, without the legacy per-event log context")
