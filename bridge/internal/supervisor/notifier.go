package supervisor

// Notifier wakes every goroutine waiting for room to free up. Its channel
// is made only when someone waits, so that the frequent notifications
// nobody waits for (a client leaving a shared child, per stateless
// request) allocate nothing. Its owner's lock guards it.
type Notifier struct {
	ch chan struct{}
}

// WaitLocked returns the channel that the next NotifyLocked closes.
func (n *Notifier) WaitLocked() <-chan struct{} {
	if n.ch == nil {
		n.ch = make(chan struct{})
	}
	return n.ch
}

// NotifyLocked wakes the goroutines waiting, if any.
func (n *Notifier) NotifyLocked() {
	if n.ch != nil {
		close(n.ch)
		n.ch = nil
	}
}
