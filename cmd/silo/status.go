package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/charmbracelet/bubbles/progress"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/lipgloss/table"
	"github.com/muesli/termenv"
	"golang.org/x/term"

	"silo/activity"
	"silo/admin"
	"silo/internal/human"
)

// adminClient reads the config for the admin socket's path.
func adminClient(name string, args []string, flags func(*flag.FlagSet)) (*admin.Client, []string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	configPath := fs.String("config", "config.toml", "configuration file")
	if flags != nil {
		flags(fs)
	}
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := loadConfig(*configPath)
	if err != nil {
		return nil, nil, err
	}
	if cfg.AdminSocket == "" {
		return nil, nil, fmt.Errorf("admin_socket is empty in %s: the server has no admin socket", *configPath)
	}
	return admin.NewClient(cfg.AdminSocket), pos, nil
}

// statusCmd is `silo status [--json] [--watch]`: the running server's
// connections and transfers, once, as JSON, or redrawn live.
func statusCmd(args []string, stdin io.Reader, stdout io.Writer) error {
	var asJSON, watch bool
	c, pos, err := adminClient("status", args, func(fs *flag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print JSON")
		fs.BoolVar(&watch, "watch", false, "redraw live until q or Ctrl-C")
	})
	if err != nil {
		return err
	}
	if len(pos) > 0 || asJSON && watch {
		return fmt.Errorf("%w: status takes --json or --watch, and no arguments", errUsage)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if watch {
		return watchStatus(c, stdin, stdout)
	}
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	width, profile := 120, termenv.Ascii
	if f, ok := stdout.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		if w, _, err := term.GetSize(int(f.Fd())); err == nil {
			width = w
		}
		profile = termenv.EnvColorProfile()
	}
	_, err = io.WriteString(stdout, renderStatus(st, width, profile))
	return err
}

// kickCmd is `silo kick USER|SESSION`.
func kickCmd(args []string, stdout io.Writer) error {
	c, pos, err := adminClient("kick", args, nil)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: kick takes one user name or session id", errUsage)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := c.Kick(ctx, pos[0])
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("no connection of user or session %q", pos[0])
	}
	fmt.Fprintf(stdout, "closed %d connection(s)\n", n)
	return nil
}

// renderStatus draws the two tables: connections, then transfers with a
// progress bar each. profile is the terminal's colours (Ascii: none).
func renderStatus(st activity.Status, width int, profile termenv.Profile) string {
	var b strings.Builder
	bold := lipgloss.NewStyle().Bold(true)
	if profile == termenv.Ascii {
		bold = lipgloss.NewStyle()
	}
	cell := lipgloss.NewStyle().PaddingRight(2)
	plain := func(t *table.Table) *table.Table {
		return t.Border(lipgloss.HiddenBorder()).BorderTop(false).BorderBottom(false).BorderLeft(false).BorderRight(false).
			BorderColumn(false).BorderHeader(false).
			StyleFunc(func(row, _ int) lipgloss.Style {
				if row == table.HeaderRow {
					return cell.Inherit(bold)
				}
				return cell
			})
	}
	fmt.Fprintf(&b, "%s\n", bold.Render(fmt.Sprintf("Connections: %d", len(st.Connections))))
	if len(st.Connections) > 0 {
		ct := plain(table.New()).Headers("USER", "SESSION", "REMOTE", "CLIENT", "SINCE", "IDLE")
		for _, c := range st.Connections {
			user := c.User
			if user == "" {
				user = "(logging in)"
			}
			ct.Row(user, c.Session, c.Remote, strings.TrimPrefix(c.Client, "SSH-2.0-"),
				c.Since.Local().Format("15:04:05"), duration(c.Idle))
		}
		b.WriteString(ct.String())
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\n%s\n", bold.Render(fmt.Sprintf("Transfers: %d", len(st.Transfers))))
	if len(st.Transfers) > 0 {
		barWidth := max(10, min(40, width-90))
		bar := progress.New(progress.WithWidth(barWidth), progress.WithColorProfile(profile), progress.WithDefaultGradient())
		if profile == termenv.Ascii {
			bar = progress.New(progress.WithWidth(barWidth), progress.WithColorProfile(profile), progress.WithFillCharacters('#', '.'))
		}
		tt := plain(table.New()).Headers("USER", "PROTO", "DIR", "PATH", "PROGRESS", "DONE", "RATE", "ETA")
		for _, t := range st.Transfers {
			done := human.Bytes(t.Bytes)
			prog := strings.Repeat(" ", barWidth)
			if t.Size >= 0 {
				done += " / " + human.Bytes(t.Size)
				frac := 1.0
				if t.Size > 0 {
					frac = min(1, float64(t.Bytes)/float64(t.Size))
				}
				prog = bar.ViewAs(frac)
			}
			dir := "up"
			if t.Direction == activity.Download {
				dir = "down"
			}
			eta := "-"
			if t.ETA >= 0 {
				eta = duration(t.ETA)
			}
			tt.Row(t.User, t.Protocol, dir, t.Path, prog, done, human.Bytes(int64(t.Rate))+"/s", eta)
		}
		b.WriteString(tt.String())
		b.WriteString("\n")
	}
	lines := strings.Split(b.String(), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Join(lines, "\n")
}

// duration writes seconds as people read them: 42s, 3m05s, 2h10m.
func duration(sec float64) string {
	d := time.Duration(sec) * time.Second
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}

// watchInterval is how often --watch asks the server again.
const watchInterval = time.Second

// watchModel is --watch's bubbletea model: it fetches the status on each
// tick and draws it.
type watchModel struct {
	c     *admin.Client
	st    activity.Status
	err   error
	width int
}

type statusMsg struct {
	st  activity.Status
	err error
}

func (m watchModel) fetch() tea.Cmd {
	return func() tea.Msg {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := m.c.Status(ctx)
		return statusMsg{st, err}
	}
}

func (m watchModel) Init() tea.Cmd { return m.fetch() }

func (m watchModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.KeyMsg:
		switch msg.String() {
		case "q", "ctrl+c", "esc":
			return m, tea.Quit
		}
	case tea.WindowSizeMsg:
		m.width = msg.Width
	case statusMsg:
		m.st, m.err = msg.st, msg.err
		return m, tea.Tick(watchInterval, func(time.Time) tea.Msg { return m.fetch()() })
	}
	return m, nil
}

func (m watchModel) View() string {
	head := fmt.Sprintf("silo status  %s  (q to quit)\n\n", m.st.Time.Local().Format("15:04:05"))
	if m.err != nil {
		return head + "error: " + m.err.Error() + "\n"
	}
	return head + renderStatus(m.st, m.width, lipgloss.ColorProfile())
}

func watchStatus(c *admin.Client, stdin io.Reader, stdout io.Writer) error {
	p := tea.NewProgram(watchModel{c: c, width: 120}, tea.WithInput(stdin), tea.WithOutput(stdout), tea.WithAltScreen())
	m, err := p.Run()
	if err != nil {
		return err
	}
	if wm, ok := m.(watchModel); ok && errors.Is(wm.err, admin.ErrNotRunning) {
		return wm.err
	}
	return nil
}
